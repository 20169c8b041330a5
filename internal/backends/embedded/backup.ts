/**
 * An online backup of the embedded database, taken by another process while the server runs. LMDB
 * lets any number of processes read a file while one writes, and its copy (`mdb_env_copy2`) reads
 * from one read transaction: the copy is the database as of one commit, so it holds every message
 * acknowledged before the backup began (an ack follows its commit) and no half of any turn. The
 * server is not paused; while the copy runs, the pages it reads are not reused, so a long backup of
 * a busy server lets the file grow by what was written meanwhile.
 *
 * The copy is written to `<out>.partial`, synced, then renamed to `<out>`: a backup cut short leaves
 * no file that looks complete, and one that fails removes its partial copy. An existing `<out>` is
 * never overwritten.
 */
import { closeSync, existsSync, fsyncSync, openSync, renameSync, rmSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { open, type RootDatabase } from "lmdb";
import { DATA_SET_KEY, newDataSetName } from "./data-set.js";
import { statfsAvailableBytes } from "./disk-space.js";

/** The database file of a data dir (the embedded backend's). */
export const DATABASE_FILE = "switchboard.mdb";
/** The named databases its file may hold at most (LMDB's maxDbs: every opener must allow as many). */
export const DATABASES_MAX = 24;
/** Where each database keeps the shapes of its values (msgpackr records); never in a key range. */
export const SHARED_STRUCTURES_KEY = Symbol.for("structures");
/** The database of the file's own facts: its data format, its data set, the id high-water mark. */
export const META_DATABASE = "meta";

/**
 * `reserveBytes`: the free space the server keeps on the data dir's disk (dataDirFreeBytesMin); a copy
 * written to that disk must leave it, or the server would refuse messages (or, with no reserve, fail
 * a commit) because of the backup.
 */
export async function backupDataDir(
  dataDir: string,
  out: string,
  reserveBytes = 0,
): Promise<{ bytes: number }> {
  const source = join(dataDir, DATABASE_FILE);
  if (!existsSync(source)) throw new Error(`backup: ${source} does not exist (is ${dataDir} a data dir?)`);
  if (existsSync(out)) throw new Error(`backup: ${out} exists; name a file that does not`);
  const partial = `${out}.partial`;
  rmSync(partial, { force: true }); // what an earlier backup cut short left
  const root = open({ path: source, noSubdir: true, readOnly: true, maxDbs: DATABASES_MAX });
  try {
    checkRoom(root, dataDir, dirname(out), reserveBytes);
    try {
      await root.backup(partial, false);
      await nameDataSetAnew(partial);
      syncFile(partial);
    } catch (err) {
      // A copy cut short (the disk full, a file size limit) would hold the space it took, often on
      // the disk the server writes to: it goes, and the error says where the copy failed.
      rmSync(partial, { force: true });
      const why = err instanceof Error ? err.message : String(err);
      throw new Error(`backup: writing ${partial} failed (${why}); the partial copy was removed`, {
        cause: err,
      });
    }
  } finally {
    await root.close();
  }
  renameSync(partial, out);
  syncFile(dirname(out));
  return { bytes: statSync(out).size };
}

/** Refuses a copy that would not fit, before writing any of it. */
function checkRoom(root: RootDatabase, dataDir: string, outDir: string, reserveBytes: number): void {
  // The copy holds the pages in use (up to the last one), not the space the file was grown by ahead.
  const { lastPageNumber, pageSize } = root.getStats() as { lastPageNumber: number; pageSize: number };
  const needed = (lastPageNumber + 1) * pageSize;
  const sameDisk = statSync(dataDir).dev === statSync(outDir).dev;
  const keep = sameDisk ? reserveBytes : 0;
  const free = statfsAvailableBytes(outDir);
  if (free - keep < needed)
    throw new Error(
      `backup: the copy needs about ${needed} bytes and ${outDir} has ${free} free` +
        (sameDisk ? `, of which the server keeps ${keep} (dataDirFreeBytesMin)` : "") +
        ": free space, or write the copy to another disk",
    );
}

function syncFile(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Names the data in the copy anew (data-set.ts): a server started on it after a restore tells its
 * clients that what they synced may not be there, and their cursors may be handed out again.
 */
async function nameDataSetAnew(copy: string): Promise<void> {
  const root = open({ path: copy, noSubdir: true, maxDbs: DATABASES_MAX });
  try {
    // Opened as the server opens it (embedded/index.ts): the same shared-structures key.
    const meta = root.openDB<string | number, string>({
      name: META_DATABASE,
      sharedStructuresKey: SHARED_STRUCTURES_KEY,
    });
    await meta.put(DATA_SET_KEY, newDataSetName());
  } finally {
    await root.close();
    rmSync(`${copy}-lock`, { force: true });
  }
}
