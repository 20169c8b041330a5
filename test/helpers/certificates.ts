/**
 * Certificates for mTLS tests, made by `openssl` in a temporary directory: CAs, and certificates they
 * sign with the identity, validity and usages a test needs (an expired one included: `openssl ca`
 * takes explicit start and end dates). Directories in cert-manager's Secret layout are written the way
 * the kubelet updates a mounted Secret: the files are links through `..data`, which a new version
 * replaces in one rename, so a reader never sees half of one version.
 */
import { execFileSync } from "node:child_process";
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface Issued {
  readonly cert: string;
  readonly key: string;
}

export interface CertificateOptions {
  /** The URI SAN, e.g. `switchboard://client:billing`. */
  uri?: string;
  /** Subject CN (default: "test"). */
  cn?: string;
  /** Valid only in the past (expired a day ago). */
  expired?: boolean;
  /** extendedKeyUsage (default: serverAuth,clientAuth). */
  usages?: string;
}

const openssl = (args: string[], cwd: string) => execFileSync("openssl", args, { cwd, stdio: "pipe" });

export class TestPki {
  readonly dir = mkdtempSync(join(tmpdir(), "switchboard-pki-"));
  private serial = 0;

  constructor() {
    writeFileSync(join(this.dir, "index.txt"), "");
    writeFileSync(join(this.dir, "serial"), "1000\n");
    mkdirSync(join(this.dir, "issued"));
    writeFileSync(
      join(this.dir, "ca.cnf"),
      [
        "[ca]",
        "default_ca = test",
        "[test]",
        `database = ${join(this.dir, "index.txt")}`,
        `new_certs_dir = ${join(this.dir, "issued")}`,
        `serial = ${join(this.dir, "serial")}`,
        "default_md = sha256",
        "policy = anything",
        "unique_subject = no",
        "[anything]",
        "commonName = supplied",
        "",
      ].join("\n"),
    );
  }

  /** A self-signed CA (P-256). */
  ca(name: string): Issued {
    const base = join(this.dir, name);
    openssl(
      [
        ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"],
        ...["-keyout", `${base}.key`, "-out", `${base}.crt`, "-subj", `/CN=${name}`, "-days", "2"],
        ...[
          "-addext",
          "basicConstraints=critical,CA:TRUE",
          "-addext",
          "keyUsage=critical,keyCertSign,cRLSign",
        ],
      ],
      this.dir,
    );
    return this.read(base);
  }

  /** A certificate `ca` signs, usable as server and client certificate (localhost, 127.0.0.1). */
  issue(ca: Issued, o: CertificateOptions = {}): Issued {
    const base = join(this.dir, `leaf-${++this.serial}`);
    writeFileSync(`${base}.ca.crt`, ca.cert);
    writeFileSync(`${base}.ca.key`, ca.key);
    openssl(
      [
        ...["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"],
        ...["-keyout", `${base}.key`, "-out", `${base}.csr`, "-subj", `/CN=${o.cn ?? "test"}`],
      ],
      this.dir,
    );
    const sans = ["DNS:localhost", "IP:127.0.0.1", ...(o.uri ? [`URI:${o.uri}`] : [])];
    writeFileSync(
      `${base}.ext`,
      [
        "[leaf]",
        "basicConstraints = CA:FALSE",
        "keyUsage = critical,digitalSignature",
        `extendedKeyUsage = ${o.usages ?? "serverAuth,clientAuth"}`,
        `subjectAltName = ${sans.join(",")}`,
        "",
      ].join("\n"),
    );
    const day = 24 * 3600 * 1000;
    const dates = o.expired
      ? { start: new Date(Date.now() - 3 * day), end: new Date(Date.now() - day) }
      : { start: new Date(Date.now() - 60_000), end: new Date(Date.now() + day) };
    openssl(
      [
        ...["ca", "-batch", "-config", "ca.cnf", "-cert", `${base}.ca.crt`, "-keyfile", `${base}.ca.key`],
        ...["-in", `${base}.csr`, "-out", `${base}.crt`, "-notext", "-extfile", `${base}.ext`],
        ...["-extensions", "leaf", "-startdate", asn1Time(dates.start), "-enddate", asn1Time(dates.end)],
      ],
      this.dir,
    );
    return this.read(base);
  }

  /**
   * Writes (or replaces) a cert-manager Secret directory: tls.crt, tls.key, ca.crt of `trusted` CAs.
   * Returns its path.
   */
  secretDir(name: string, identity: Issued, trusted: readonly Issued[]): string {
    const dir = join(this.dir, name);
    mkdirSync(dir, { recursive: true });
    const version = `..version-${++this.serial}`;
    mkdirSync(join(dir, version));
    writeFileSync(join(dir, version, "tls.crt"), identity.cert);
    writeFileSync(join(dir, version, "tls.key"), identity.key);
    writeFileSync(join(dir, version, "ca.crt"), trusted.map((t) => t.cert).join(""));
    symlinkSync(version, join(dir, "..data_tmp"));
    renameSync(join(dir, "..data_tmp"), join(dir, "..data"));
    for (const file of ["tls.crt", "tls.key", "ca.crt"]) {
      try {
        symlinkSync(join("..data", file), join(dir, file));
      } catch {
        // Already a link through ..data: the rename above switched it.
      }
    }
    return dir;
  }

  close(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  private read(base: string): Issued {
    return { cert: readFileSync(`${base}.crt`, "utf8"), key: readFileSync(`${base}.key`, "utf8") };
  }
}

/** `YYYYMMDDHHMMSSZ`, as `openssl ca -startdate/-enddate` take it. */
function asn1Time(d: Date): string {
  return `${d.toISOString().replace(/[-:T]/g, "").slice(0, 14)}Z`;
}
