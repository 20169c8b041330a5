/**
 * The principal of a client certificate (ADR 0007, mTLS): its URI SAN `switchboard://<identity>`, or,
 * without one, its subject CN; either must be a principal (role:<role>, operator, client:<name>).
 *
 * The TLS handshake already refused certificates of another CA, expired ones and none at all (with
 * optional client certificates it lets them through, but grpc-js hands over only a certificate the
 * handshake verified, so such a certificate names no one). This check runs again on every call,
 * against the CAs in force now, because an HTTP/2 connection outlives both a rotation and a
 * certificate's expiry: a client whose CA was revoked by a rotation, or whose
 * certificate expired, is refused on a connection it opened before. Verdicts are cached per
 * certificate and CA version (a busy connection costs one signature check, not one per call).
 */
import { createHash, X509Certificate } from "node:crypto";
import { dropOldest } from "../lib/drop-oldest.js";
import { errors, type SwitchboardError } from "../lib/errors.js";
import { isPrincipal, type Principal } from "./policy.js";

/** The CAs in force: the current version's (TlsDirectory.version). */
export interface TrustedCas {
  readonly cas: readonly X509Certificate[];
}

type Verdict = { principal: Principal } | { refusal: SwitchboardError };

const URI_PREFIX = "switchboard://";
/** id-kp-clientAuth. */
const CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";
const CACHE_MAX = 1_000;

/** Turns a peer certificate (DER) into its principal, or throws UNAUTHENTICATED with the reason. */
export class CertificateAuthenticator {
  private readonly cache = new Map<string, { trusted: TrustedCas; verdict: Verdict; validToMs: number }>();

  constructor(
    private readonly trusted: () => TrustedCas,
    private readonly now: () => number = Date.now,
  ) {}

  principalOf(der: Buffer): Principal {
    const trusted = this.trusted();
    const key = createHash("sha256").update(der).digest("base64");
    let entry = this.cache.get(key);
    if (!entry || entry.trusted !== trusted) {
      const leaf = new X509Certificate(der);
      entry = { trusted, verdict: verdictOf(leaf, trusted.cas), validToMs: Date.parse(leaf.validTo) };
      if (this.cache.size >= CACHE_MAX) dropOldest(this.cache);
      this.cache.set(key, entry);
    }
    if (this.now() > entry.validToMs)
      throw errors.unauthenticated("CERTIFICATE_EXPIRED", "the client certificate has expired");
    if ("refusal" in entry.verdict) throw entry.verdict.refusal;
    return entry.verdict.principal;
  }
}

function verdictOf(leaf: X509Certificate, cas: readonly X509Certificate[]): Verdict {
  if (!cas.some((ca) => leaf.checkIssued(ca) && leaf.verify(ca.publicKey)))
    return {
      refusal: errors.unauthenticated(
        "CERTIFICATE_NOT_TRUSTED",
        "the client certificate is not signed by a CA the server trusts now (rotated out?)",
      ),
    };
  // A certificate limited to other uses (server auth only, say) is no client credential.
  if (leaf.keyUsage !== undefined && !leaf.keyUsage.includes(CLIENT_AUTH))
    return {
      refusal: errors.unauthenticated(
        "CERTIFICATE_NOT_FOR_CLIENTS",
        "the client certificate's extended key usage does not include client authentication",
      ),
    };
  if (Date.now() < Date.parse(leaf.validFrom))
    return {
      refusal: errors.unauthenticated("CERTIFICATE_NOT_YET_VALID", "the client certificate is not valid yet"),
    };
  const identity = identityOf(leaf);
  if (identity === undefined || !isPrincipal(identity))
    return {
      refusal: errors.unauthenticated(
        "CERTIFICATE_NO_PRINCIPAL",
        `the client certificate names no principal: expected a URI SAN ${URI_PREFIX}<principal> or a CN that is one (role:<role>, operator, client:<name>)${identity === undefined ? "" : `, not "${identity}"`}`,
      ),
    };
  return { principal: identity };
}

/**
 * The identity a certificate claims: its one `switchboard://` URI SAN (two are ambiguous: none is
 * taken), else its subject CN.
 */
export function identityOf(cert: X509Certificate): string | undefined {
  const uris = (cert.subjectAltName ?? "")
    .split(/,\s*/)
    .filter((entry) => entry.startsWith(`URI:${URI_PREFIX}`))
    .map((entry) => entry.slice(`URI:${URI_PREFIX}`.length));
  if (uris.length > 1) return undefined;
  if (uris.length === 1) return uris[0];
  return /^CN=(.+)$/m.exec(cert.subject)?.[1];
}
