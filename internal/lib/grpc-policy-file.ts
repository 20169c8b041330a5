/**
 * The gRPC policy file (ADR 0007): who the ServiceAccounts are and what backend clients may do, in
 * the form the operator renders from a ChatCluster (a ConfigMap every role Pod mounts) and the roles
 * read (grpc.policyFile), again whenever it changes, so adding a client needs no restart. Only the
 * format lives here, shared by both sides; internal/grpc-auth checks what it says.
 */

/** What one backend client is granted (ChatCluster spec.api.clients[]). */
export interface PolicyFileClient {
  /** `client:<name>` is its principal. */
  readonly name: string;
  /** Permission names (internal/grpc-auth/policy.ts PERMISSIONS). */
  readonly permissions: readonly string[];
  /** Every sender it may publish as, in place of its own bot:<name> (list that too to keep it); empty: bot:<name>. */
  readonly sendAs?: readonly string[];
  /** The conversations it may publish into or read: all, these, or (neither) those it is a member of. */
  readonly conversations?: { readonly all?: boolean; readonly ids?: readonly string[] };
}

export interface PolicyFile {
  /** `namespace/name` of a ServiceAccount → its principal (`role:<role>`, `operator`, `client:<name>`). */
  readonly serviceAccounts: Readonly<Record<string, string>>;
  readonly clients: readonly PolicyFileClient[];
}

/** The file's name in the directory the operator mounts its ConfigMap at. */
export const POLICY_FILE_NAME = "policy.json";
