/**
 * The step every gRPC call of a guarded server passes before its handler (ADR 0007): the caller's
 * credentials (its client certificate on a TLS port, `authorization: Bearer …`) are turned into a
 * principal by the configured authenticators, then the policy decides whether that principal may call
 * the method. The standard health service is
 * public (kubelet and load balancers probe it without credentials); everything else needs both steps.
 */
import { errors } from "../lib/errors.js";
import type { CertificateAuthenticator } from "./certificates.js";
import { authorize, type Policy, type Principal } from "./policy.js";

/** Maps a bearer credential to its principal, or undefined if it is not one this authenticator knows. */
export type Authenticator = (bearer: string) => Principal | undefined | Promise<Principal | undefined>;

/**
 * Decides a call from its path, its `authorization` metadata and its client certificate (DER; only on
 * a TLS port): resolves to its principal (undefined for a public method) or throws the refusal.
 */
export type CallGuard = (
  path: string,
  authorization: string | undefined,
  peerCertificate?: Buffer | undefined,
) => Promise<Principal | undefined>;

const PUBLIC_PREFIXES = ["/grpc.health.v1.Health/"];
/** Server reflection (when it is served at all) describes the API to any authenticated caller. */
const AUTHENTICATED_PREFIXES = [
  "/grpc.reflection.v1.ServerReflection/",
  "/grpc.reflection.v1alpha.ServerReflection/",
];
const BEARER = /^Bearer ([\x21-\x7e]{1,8192})$/;

/**
 * `policy` may be a function: the policy in force at each call (a policy file read again on change).
 * `certificates` (a TLS port) makes the client certificate a credential; a bearer credential sent as
 * well must then name the same principal (one call, one identity: never the stronger of two).
 */
export function callGuard(
  authenticators: readonly Authenticator[],
  policy: Policy | (() => Policy),
  certificates?: CertificateAuthenticator,
): CallGuard {
  const policyNow = typeof policy === "function" ? policy : () => policy;
  return async (path, authorization, peerCertificate) => {
    if (PUBLIC_PREFIXES.some((p) => path.startsWith(p))) return undefined;
    const certified = certificates && peerCertificate ? certificates.principalOf(peerCertificate) : undefined;
    let principal: Principal | undefined;
    const bearer = authorization === undefined ? undefined : BEARER.exec(authorization)?.[1];
    if (authorization !== undefined && bearer === undefined)
      throw errors.unauthenticated(
        "MALFORMED_CREDENTIALS",
        "the authorization metadata is not `Bearer <credential>`",
      );
    if (bearer !== undefined)
      for (const authenticate of authenticators) {
        principal = await authenticate(bearer);
        if (principal) break;
      }
    if (bearer !== undefined && principal === undefined)
      throw errors.unauthenticated("INVALID_CREDENTIALS", `the credential is not valid for ${path}`);
    if (certified !== undefined && principal !== undefined && principal !== certified)
      throw errors.unauthenticated(
        "CONFLICTING_CREDENTIALS",
        `the client certificate is ${certified}'s but the bearer credential is ${principal}'s`,
      );
    principal ??= certified;
    if (principal !== undefined && AUTHENTICATED_PREFIXES.some((p) => path.startsWith(p))) return principal;
    authorize(policyNow(), principal, path);
    return principal;
  };
}
