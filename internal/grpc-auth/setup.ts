/**
 * A process's gRPC authentication from its configuration (ADR 0007): the guard its server runs every
 * call past, and the credential its own calls to other roles carry.
 */
import { isValidConversationId, SYSTEM_SENDER } from "../conversations/conversations.js";
import { isValidUserId } from "../lib/auth.js";
import type { Config } from "../lib/config.js";
import type { PolicyFile, PolicyFileClient } from "../lib/grpc-policy-file.js";
import type { Logger } from "../lib/log.js";
import { reloadingFile } from "../lib/reloading-file.js";
import type { CallGuard } from "../lib/rpc.js";
import { CertificateAuthenticator } from "./certificates.js";
import { type Authenticator, callGuard } from "./guard.js";
import { KeyFile } from "./key-file.js";
import {
  botIdentity,
  type ClientGrant,
  type ConversationGrant,
  isPrincipal,
  PERMISSIONS,
  type Permission,
  type Policy,
  type Principal,
} from "./policy.js";
import { kubeTokenReviewer, ServiceAccountTokens } from "./service-account-tokens.js";
import type { GrpcTls } from "./tls.js";

/** How often the credential and the key file are looked at again for a change. */
const CREDENTIAL_RECHECK_MS = 60_000;
const KEY_FILE_RECHECK_MS = 5_000;
const POLICY_FILE_RECHECK_MS = 5_000;

/** Who the ServiceAccounts are and what clients may do, as in force now. */
export interface GrpcPolicy {
  policy: Policy;
  accounts: Map<string, Principal>;
}

/**
 * The configuration's grants and ServiceAccounts with grpc.policyFile's added (read again when it
 * changes): what the guard admits methods by and the server API checks senders and conversations by.
 */
export function grpcPolicy(config: Config, log: Logger): () => GrpcPolicy {
  const g = config.grpc;
  const configured = { policy: policyOf(g.clients), accounts: serviceAccounts(g.serviceAccounts) };
  const fromFile =
    g.policyFile === ""
      ? undefined
      : reloadingFile(g.policyFile, "grpc.policyFile", POLICY_FILE_RECHECK_MS, log, (text) =>
          parsePolicyFile(text, g.policyFile),
        );
  // Merged once per version of the file, not per call.
  let merged: { file: GrpcPolicy; value: GrpcPolicy } | undefined;
  return () => {
    const file = fromFile?.();
    if (!file) return configured;
    if (merged?.file !== file)
      merged = {
        file,
        value: {
          policy: { clients: new Map([...configured.policy.clients, ...file.policy.clients]) },
          accounts: new Map([...configured.accounts, ...file.accounts]),
        },
      };
    return merged.value;
  };
}

/**
 * The guard of this process's gRPC server, or undefined when no authentication is configured; `tls`
 * (grpc.tls.dir) makes client certificates credentials.
 */
export async function grpcGuard(
  config: Config,
  log: Logger,
  tls?: GrpcTls,
  current: () => GrpcPolicy = grpcPolicy(config, log),
): Promise<CallGuard | undefined> {
  const g = config.grpc;
  if (g.keyFile === "" && g.tokenAudience === "" && !tls) return undefined;
  const authenticators: Authenticator[] = [];
  if (g.keyFile !== "") {
    const keys = reloadingFile(g.keyFile, "grpc.keyFile", KEY_FILE_RECHECK_MS, log, (text) =>
      KeyFile.parse(text, g.keyFile),
    );
    authenticators.push((bearer) => keys().verify(bearer));
  }
  if (g.tokenAudience !== "") {
    const tokens = new ServiceAccountTokens({
      reviewer: await kubeTokenReviewer(),
      audience: g.tokenAudience,
      accounts: () => current().accounts,
    });
    authenticators.push(async (bearer) => {
      // Only what looks like a JWT goes to the API server: a static key never leaves the process.
      if (bearer.split(".").length !== 3) return undefined;
      return tokens.verify(bearer);
    });
  }
  const certificates = tls && new CertificateAuthenticator(() => tls.directory.version);
  return callGuard(authenticators, () => current().policy, certificates);
}

/** This process's credential for its calls to other roles (undefined: none configured). */
export function grpcCredential(config: Config, log: Logger): (() => string | undefined) | undefined {
  const file = config.grpc.credentialFile;
  if (file === "") return undefined;
  // Projected tokens are rotated by the kubelet (which swaps the file): read again when it changes.
  return reloadingFile(file, "grpc.credentialFile", CREDENTIAL_RECHECK_MS, log, (text) => {
    const value = text.trim();
    if (value === "") throw new Error(`grpc.credentialFile ${file} is empty`);
    return value;
  });
}

function serviceAccounts(entries: readonly string[]): Map<string, Principal> {
  const out = new Map<string, Principal>();
  for (const entry of entries) {
    const m = /^([a-z0-9-]+\/[a-z0-9.-]+)=(.+)$/.exec(entry);
    if (!m || !isPrincipal(m[2]!))
      throw new Error(`grpc.serviceAccounts: "${entry}" is not namespace/name=principal`);
    out.set(m[1]!, m[2]);
  }
  return out;
}

/**
 * A policy-file client in the `grpc.clients` entry form, so that both are read by one parser and
 * mean the same: `sendAs` lists every sender the client may publish as, in place of its own
 * `bot:<name>` (list that too to keep it), and a client granted one sender sends as it by default
 * (docs/server-api.md, "What a client may do"; chat.proto PublishRequest.sender).
 */
function clientEntry(c: PolicyFileClient): string {
  let entry = `${c.name}=${(c.permissions ?? []).join("+")}`;
  // An empty list reads as none given: the default, bot:<name>.
  if (c.sendAs && c.sendAs.length > 0) entry += `;sendAs=${c.sendAs.join("|")}`;
  if (c.conversations?.all) entry += ";conversations=all";
  else if (c.conversations?.ids) {
    // An empty list would read as no `conversations` at all, the sender's own: wider, not narrower.
    if (c.conversations.ids.length === 0)
      throw new Error(
        `client ${c.name}: conversations.ids is empty (omit conversations for the conversations its senders are in)`,
      );
    entry += `;conversations=${c.conversations.ids.join("|")}`;
  }
  return entry;
}

/**
 * The policy file's grants and ServiceAccounts (lib/grpc-policy-file.ts), checked like the
 * configuration's: a client or account that is not one fails the whole file (the previous version
 * stays in force), so a typo never opens or closes more than it says.
 */
export function parsePolicyFile(
  text: string,
  source: string,
): { policy: Policy; accounts: Map<string, Principal> } {
  let file: PolicyFile;
  try {
    file = JSON.parse(text) as PolicyFile;
  } catch (err) {
    throw new Error(`${source}: not JSON: ${(err as Error).message}`);
  }
  try {
    const accounts = serviceAccounts(
      Object.entries(file.serviceAccounts ?? {}).map(([account, principal]) => `${account}=${principal}`),
    );
    const policy = policyOf((file.clients ?? []).map(clientEntry), false);
    return { policy, accounts };
  } catch (err) {
    throw new Error(`${source}: ${(err as Error).message}`);
  }
}

/**
 * The clients' grants from `name=permission+permission[;sendAs=user|user][;conversations=C]` entries,
 * C being `all`, `member` (the default) or conversation ids separated by `|`. `checkIds`: refuse a
 * sender or conversation id no user or conversation can have (grpc.clients, a typo said at start).
 * Not for the policy file: the operator copies a ChatCluster's ids into it as they are (its CRD takes
 * any string), and one such id must not fail the file every role reads its identity from; there it
 * grants nothing (a request naming it is refused as malformed before any grant is looked at).
 */
export function policyOf(entries: readonly string[], checkIds = true): Policy {
  const clients = new Map<string, ClientGrant>();
  for (const entry of entries) {
    const [head = "", ...options] = entry.split(";");
    const m = /^([a-z0-9-]+)=([A-Za-z+]*)$/.exec(head);
    const permissions = (m?.[2] ?? "").split("+").filter(Boolean);
    const unknown = permissions.filter((p) => !(PERMISSIONS as readonly string[]).includes(p));
    if (!m || !isPrincipal(`client:${m[1]}`) || unknown.length > 0)
      throw new Error(
        `grpc.clients: "${entry}" is not name=permission+…[;sendAs=…][;conversations=…] (permissions: ${PERMISSIONS.join(", ")})`,
      );
    const name = m[1]!;
    let sendAs: ReadonlySet<string> = new Set([botIdentity(name)]);
    let conversations: ConversationGrant = "member";
    for (const option of options) {
      const [key, value = ""] = option.split("=", 2) as [string, string?];
      // Not commas: a list setting's entries are separated by commas (SWITCHBOARD_GRPC_CLIENTS).
      const items = value.split("|").filter(Boolean);
      if (
        key === "sendAs" &&
        items.length > 0 &&
        (!checkIds || items.every((u) => u === SYSTEM_SENDER || isValidUserId(u)))
      )
        sendAs = new Set(items);
      else if (key === "conversations" && (value === "all" || value === "member")) conversations = value;
      else if (
        key === "conversations" &&
        items.length > 0 &&
        (!checkIds || items.every(isValidConversationId))
      )
        conversations = new Set(items);
      else
        throw new Error(
          `grpc.clients: "${entry}": "${option}" is not sendAs=user|… or conversations=all|member|id|… (ids as g:<digits> or dm:<user>~<user>)`,
        );
    }
    // Two grants of one name: which one would hold is no one's guess to make.
    if (clients.has(name)) throw new Error(`grpc.clients: client ${name} is granted twice ("${entry}")`);
    clients.set(name, { permissions: new Set(permissions as Permission[]), sendAs, conversations });
  }
  return { clients };
}
