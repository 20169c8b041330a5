/** A setting's file, read again when it changes: keys and policies rotate without a restart. */
import { readFileSync, statSync } from "node:fs";
import type { Logger } from "./log.js";

/**
 * `parse` of the file's text, parsed again when its modification time changes (looked at no more
 * often than every `recheckMs`); a version that cannot be read or parsed keeps the previous one in
 * force. The first read throws: a process must not start without its credentials.
 */
export function reloadingFile<T>(
  file: string,
  setting: string,
  recheckMs: number,
  log: Logger,
  parse: (text: string) => T,
): () => T {
  // Stat first, then read: a change in between is read again at the next check, not taken for the
  // version of the earlier time. A file that cannot be read at start names its setting.
  let mtimeMs: number;
  let text: string;
  try {
    mtimeMs = statSync(file).mtimeMs;
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new Error(`${setting} ${file}: ${(err as Error).message}`, { cause: err });
  }
  let value = parse(text);
  let checkedAtMs = Date.now();
  return () => {
    if (Date.now() - checkedAtMs > recheckMs) {
      checkedAtMs = Date.now();
      try {
        const m = statSync(file).mtimeMs;
        if (m !== mtimeMs) {
          value = parse(readFileSync(file, "utf8"));
          mtimeMs = m;
          log.info(`${setting} re-read`, { file });
        }
      } catch (err) {
        log.warn(`${setting} could not be re-read; the previous version stays in force`, { file, err });
      }
    }
    return value;
  };
}
