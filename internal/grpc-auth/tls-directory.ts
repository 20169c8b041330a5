/**
 * The gRPC port's key pair and client CA from a directory in cert-manager's Secret layout (ADR 0007):
 * `tls.crt` (the certificate, chain after it), `tls.key`, `ca.crt` (the CAs whose certificates are
 * trusted: clients' on a server, servers' on a client). It is a grpc-js CertificateProvider: the
 * server and the clients built on it take a new version for every new connection, so rotation needs
 * no restart.
 *
 * Why not grpc-js's FileWatcherCertificateProvider: it hands over whatever it read, every interval,
 * changed or not, and a failed or torn read (tls.crt of the new version, tls.key of the old, read
 * across the kubelet's swap of the mounted Secret) becomes "no credentials", on which the server drops
 * every new connection until the next read. This one hands over only a changed version whose key
 * matches its certificate and whose CAs parse; a version that is not whole keeps the last good one in
 * force (logged). It also keeps the current CAs parsed, so that every call can be checked against them
 * (a revoked CA refuses calls on connections opened before the rotation, too: certificates.ts).
 */

import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { experimental } from "@grpc/grpc-js";
import type { Logger } from "../lib/log.js";

type CertificateProvider = experimental.CertificateProvider;
type CaListener = experimental.CaCertificateUpdateListener;
type IdentityListener = experimental.IdentityCertificateUpdateListener;

/** One whole version of the directory. */
export interface TlsVersion {
  readonly certificate: Buffer;
  readonly privateKey: Buffer;
  readonly caBundle: Buffer;
  /** The CAs of `caBundle`, parsed. */
  readonly cas: readonly X509Certificate[];
  /** Our own certificate, parsed (its identity, for the log). */
  readonly leaf: X509Certificate;
}

const FILES = { certificate: "tls.crt", privateKey: "tls.key", caBundle: "ca.crt" } as const;

export class TlsDirectory implements CertificateProvider {
  private current: TlsVersion;
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();
  private readonly timer: NodeJS.Timeout;
  private lastFailure: string | undefined;

  /**
   * Reads `dir` now (throws if it is not a whole version: a process must not start without its
   * certificates) and again every `refreshMs`.
   */
  constructor(
    readonly dir: string,
    refreshMs: number,
    private readonly log: Logger,
  ) {
    this.current = readVersion(dir);
    log.info("gRPC TLS certificates loaded", describe(this.current, dir));
    this.timer = setInterval(() => this.refresh(), refreshMs);
    // The server and the process's other resources keep it alive; this timer alone must not.
    this.timer.unref();
  }

  /** The version in force. */
  get version(): TlsVersion {
    return this.current;
  }

  /** Reads the directory again and hands a changed, whole version to every listener. */
  refresh(): void {
    let next: TlsVersion;
    try {
      next = readVersion(this.dir);
    } catch (err) {
      // Once per distinct failure: an unfinished rotation is read again every refreshMs.
      const failure = (err as Error).message;
      if (failure !== this.lastFailure)
        this.log.warn("gRPC TLS certificates could not be re-read; the previous version stays in force", {
          dir: this.dir,
          err,
        });
      this.lastFailure = failure;
      return;
    }
    this.lastFailure = undefined;
    const c = this.current;
    if (
      next.certificate.equals(c.certificate) &&
      next.privateKey.equals(c.privateKey) &&
      next.caBundle.equals(c.caBundle)
    )
      return;
    this.current = next;
    this.log.info("gRPC TLS certificates re-read", describe(next, this.dir));
    for (const listener of this.identityListeners) listener(identityOf(next));
    for (const listener of this.caListeners) listener({ caCertificate: next.caBundle });
  }

  close(): void {
    clearInterval(this.timer);
    this.caListeners.clear();
    this.identityListeners.clear();
  }

  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    process.nextTick(listener, { caCertificate: this.current.caBundle });
  }
  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
  }
  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    process.nextTick(listener, identityOf(this.current));
  }
  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
  }
}

const identityOf = (v: TlsVersion) => ({ certificate: v.certificate, privateKey: v.privateKey });

/** Reads and checks one version: the key matches the certificate, every CA parses. */
export function readVersion(dir: string): TlsVersion {
  const read = (name: string) => {
    try {
      return readFileSync(join(dir, name));
    } catch (err) {
      throw new Error(`gRPC TLS: cannot read ${join(dir, name)}: ${(err as Error).message}`);
    }
  };
  const certificate = read(FILES.certificate);
  const privateKey = read(FILES.privateKey);
  const caBundle = read(FILES.caBundle);
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(certificate);
  } catch (err) {
    throw new Error(
      `gRPC TLS: ${join(dir, FILES.certificate)} is not a PEM certificate: ${(err as Error).message}`,
    );
  }
  let keyMatches: boolean;
  try {
    keyMatches = leaf.checkPrivateKey(createPrivateKey(privateKey));
  } catch (err) {
    throw new Error(
      `gRPC TLS: ${join(dir, FILES.privateKey)} is not a PEM private key: ${(err as Error).message}`,
    );
  }
  if (!keyMatches)
    throw new Error(
      `gRPC TLS: ${join(dir, FILES.privateKey)} is not the key of ${join(dir, FILES.certificate)} (a rotation read half-way?)`,
    );
  const cas = parseBundle(caBundle, join(dir, FILES.caBundle));
  return { certificate, privateKey, caBundle, cas, leaf };
}

/** Every certificate of a PEM bundle; at least one. */
function parseBundle(pem: Buffer, source: string): X509Certificate[] {
  const blocks = pem.toString("utf8").match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  if (!blocks || blocks.length === 0) throw new Error(`gRPC TLS: ${source} holds no PEM certificate`);
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new Error(`gRPC TLS: certificate ${i + 1} of ${source}: ${(err as Error).message}`);
    }
  });
}

function describe(v: TlsVersion, dir: string) {
  return {
    dir,
    subject: v.leaf.subject.replace(/\n/g, ", "),
    subjectAltName: v.leaf.subjectAltName,
    validTo: v.leaf.validTo,
    cas: v.cas.map((ca) => ca.subject.replace(/\n/g, ", ")),
  };
}
