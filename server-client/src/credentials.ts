/**
 * Credentials a backend sends as `authorization: Bearer …` (docs/server-api.md): a static key made by
 * `switchboard grpc-key`, or a Kubernetes ServiceAccount token projected into the Pod, which the
 * kubelet replaces before it expires — so it is read again whenever the file changes.
 */
import { readFile, stat } from "node:fs/promises";

/** A credential: the value itself, or a function called before each call. */
export type Credential = string | (() => string | Promise<string>);

/**
 * The credential held in `path` (e.g. `/var/run/secrets/switchboard/token`), read again when its
 * modification time changes, looked at no more often than every `recheckMs`.
 */
export function credentialFile(path: string, recheckMs = 10_000): () => Promise<string> {
  let value: string | undefined;
  let mtimeMs = -1;
  let checkedAtMs = 0;
  return async () => {
    if (value !== undefined && Date.now() - checkedAtMs < recheckMs) return value;
    checkedAtMs = Date.now();
    const m = (await stat(path)).mtimeMs;
    if (value === undefined || m !== mtimeMs) {
      const text = (await readFile(path, "utf8")).trim();
      if (text === "") throw new Error(`credential file ${path} is empty`);
      value = text;
      mtimeMs = m;
    }
    return value;
  };
}
