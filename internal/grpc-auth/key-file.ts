/**
 * The static key file (ADR 0007): for the single process and development, where there are no
 * ServiceAccount tokens or certificates. One line per key: `<principal> sha256:<hex of the key's
 * SHA-256>`; `#` starts a comment. The file holds only hashes, so reading it reveals no key. A caller
 * sends `authorization: Bearer <key>`; the key's hash is compared with every line in constant time.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { isPrincipal, type Principal } from "./policy.js";

interface KeyLine {
  principal: Principal;
  hash: Buffer;
}

const LINE = /^(\S+)\s+sha256:([0-9a-f]{64})$/;

export class KeyFile {
  private constructor(private readonly lines: readonly KeyLine[]) {}

  /** Parses the file's text; a malformed line fails with its number (a typo must not open a port). */
  static parse(text: string, source = "key file"): KeyFile {
    const lines: KeyLine[] = [];
    text.split("\n").forEach((raw, i) => {
      const line = raw.replace(/#.*/, "").trim();
      if (line === "") return;
      const m = LINE.exec(line);
      if (!m) throw new Error(`${source}:${i + 1}: expected "<principal> sha256:<64 hex digits>"`);
      if (!isPrincipal(m[1]!))
        throw new Error(
          `${source}:${i + 1}: "${m[1]}" is not a principal (role:<role>, operator, client:<name>)`,
        );
      // One key, two principals: which one a caller is would depend on the lines' order.
      if (lines.some((l) => l.hash.toString("hex") === m[2]))
        throw new Error(`${source}:${i + 1}: this key's hash is on an earlier line too`);
      lines.push({ principal: m[1], hash: Buffer.from(m[2]!, "hex") });
    });
    return new KeyFile(lines);
  }

  get size(): number {
    return this.lines.length;
  }

  /** The principal a bearer key belongs to, or undefined. Every line is compared (constant time). */
  verify(key: string): Principal | undefined {
    const hash = sha256(key);
    let found: Principal | undefined;
    for (const line of this.lines) if (timingSafeEqual(line.hash, hash) && !found) found = line.principal;
    return found;
  }
}

const sha256 = (key: string) => createHash("sha256").update(key, "utf8").digest();

/** A new random key for `principal` and the line that admits it (what an operator puts in the file). */
export function newKey(principal: Principal): { key: string; line: string } {
  const key = randomBytes(32).toString("base64url");
  return { key, line: `${principal} sha256:${sha256(key).toString("hex")}` };
}
