/**
 * A data dir records the format of what it holds (DATA_FORMAT): a build opens older ones and marks
 * them with its own, and refuses one written by a newer build, naming the dir and both formats.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { open } from "lmdb";
import { afterEach, describe, expect, it } from "vitest";
import { DATABASE_FILE, DATABASES_MAX } from "./backup.js";
import { DATA_FORMAT, EmbeddedBackends } from "./index.js";

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

/** The format stored in a closed data dir, or sets it (as a newer build would). */
async function storedFormat(dataDir: string, set?: number): Promise<unknown> {
  const root = open({ path: join(dataDir, DATABASE_FILE), noSubdir: true, maxDbs: DATABASES_MAX });
  const meta = root.openDB({ name: "meta", sharedStructuresKey: Symbol.for("structures") });
  if (set !== undefined) await meta.put("data-format", set);
  const value = meta.get("data-format");
  await root.close();
  return value;
}

describe("data format", () => {
  it("marks a data dir with this build's format and refuses one of a newer format", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "switchboard-format-"));
    dirs.push(dataDir);
    await new EmbeddedBackends({ dataDir }).close();
    expect(await storedFormat(dataDir)).toBe(DATA_FORMAT);

    await storedFormat(dataDir, DATA_FORMAT + 1);
    let refused: unknown;
    try {
      await new EmbeddedBackends({ dataDir }).close();
    } catch (err) {
      refused = err;
    }
    expect(refused).toMatchObject({ reason: "DATA_FORMAT_NEWER" });
    expect((refused as Error).message).toContain(`data dir ${dataDir} was written by a newer Switchboard`);
    expect((refused as Error).message).toContain(
      `data format ${DATA_FORMAT + 1}; this build reads up to ${DATA_FORMAT}`,
    );
    // Refused before anything was written, and the dir is not left locked: the right build opens it.
    expect(await storedFormat(dataDir, DATA_FORMAT)).toBe(DATA_FORMAT);
    await new EmbeddedBackends({ dataDir }).close();
  });
});
