/**
 * Rejections of lmdb-js's own promises that nothing of ours holds. When a commit fails, lmdb-js
 * rejects every write's promise (the backend's guard handles those: it stops the process, see
 * store.ts, Guard), and also two of its own: the commit promise it opened for an event turn's batch
 * and then replaced (a TODO in its write.js), and `commitError`, which carries the file system's
 * error. Nothing can handle those two, so each would add a fatal "unhandled promise rejection" line
 * to a process that is already stopping for that very failure. No lmdb import here: the CLI's entry
 * point loads this.
 */

/** Whether `err` was rejected by lmdb-js's commit code itself (its first frame is in lmdb's write.js). */
export function isLmdbCommitRejection(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const thrownAt = (err.stack ?? "").split("\n").find((line) => line.trimStart().startsWith("at "));
  return thrownAt !== undefined && /[\\/]lmdb[\\/]write\.js:\d+:\d+\)?$/.test(thrownAt);
}
