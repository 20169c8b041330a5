/**
 * `switchboard backup` copies the embedded database while the server runs and keeps sending: the copy
 * is one commit's state, so a server started on it has every message acknowledged before the backup
 * began, in gap-free seqs, and nothing invented; the running server is not disturbed. (Embedded only:
 * the distributed backend's data is Kafka's and Cassandra's.)
 */
import { execFile } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { cliPath, devToken, type ServerProcess, startServer } from "../helpers/server.js";

const FAST_SENDS = {
  SWITCHBOARD_GATEWAY_SENDS_PER_SECOND: "10000",
  SWITCHBOARD_GATEWAY_SEND_BURST: "10000",
  SWITCHBOARD_GATEWAY_USER_SENDS_PER_SECOND: "10000",
};

let server: ServerProcess;
const scratch = mkdtempSync(join(tmpdir(), "switchboard-backup-"));

beforeAll(async () => {
  server = await startServer({ env: FAST_SENDS });
});
afterAll(async () => {
  await server.dispose();
  rmSync(scratch, { recursive: true, force: true });
});

function backup(
  dataDir: string,
  out: string,
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [cliPath, "backup", "--data-dir", dataDir, "--out", out],
      { env: { ...process.env, ...env } },
      (err, stdout, stderr) =>
        resolve({ code: typeof err?.code === "number" ? err.code : err ? 1 : 0, stdout, stderr }),
    );
  });
}

describe("switchboard backup", () => {
  it("copies the database while messages flow: a server on the copy has every message acked before it began", async () => {
    const alice = await RawClient.connect(server.url, { token: await devToken(server.dataDir, "alice") });
    const TOTAL = 600;
    const acked = new Map<string, bigint>(); // clientMsgId -> seq
    let ackedAtBackup: Map<string, bigint> | undefined;
    let copied: Promise<{ code: number; stdout: string; stderr: string }> | undefined;
    const out = join(scratch, "copy.mdb");
    const sends = Array.from({ length: TOTAL }, (_, i) =>
      alice
        .request(
          {
            case: "send",
            value: { target: { case: "toUser", value: "bob" }, clientMsgId: `b${i}`, body: `${i}` },
          },
          60_000,
        )
        .then((f) => {
          acked.set(`b${i}`, expectCase(f, "ack").seq);
          // Mid-stream: sends keep coming while the copy is taken.
          if (!copied && acked.size >= 200) {
            ackedAtBackup = new Map(acked);
            copied = backup(server.dataDir, out);
          }
        }),
    );
    await Promise.all(sends);
    const result = await copied!;
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ status: "backed up", out });
    expect(existsSync(`${out}.partial`)).toBe(false);
    // The running server was not disturbed: everything was acknowledged, and it still takes sends.
    expect(acked.size).toBe(TOTAL);
    expectCase(
      await alice.request({
        case: "send",
        value: { target: { case: "toUser", value: "bob" }, clientMsgId: "after", body: "after" },
      }),
      "ack",
    );
    alice.close();

    // An existing file is never overwritten.
    const again = await backup(server.dataDir, out);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toContain("exists");

    // Restored as the README says: the copy in a data dir as switchboard.mdb (and the dev token key).
    const restoredDir = join(scratch, "restored");
    mkdirSync(restoredDir);
    copyFileSync(out, join(restoredDir, "switchboard.mdb"));
    copyFileSync(join(server.dataDir, "dev-jwt-secret"), join(restoredDir, "dev-jwt-secret"));
    const restored = await startServer({ dataDir: restoredDir, env: FAST_SENDS });
    try {
      const reader = await RawClient.connect(restored.url, { token: await devToken(restoredDir, "alice") });
      // The copy names another data set than the server it was taken from, which names the same on
      // every connection: a client that synced with that one learns its cursor may be handed out again.
      const original = await RawClient.connect(server.url, {
        token: await devToken(server.dataDir, "alice"),
      });
      expect(original.welcome?.dataSet).toMatch(/^[A-Za-z0-9_-]{22}$/);
      expect(alice.welcome?.dataSet).toBe(original.welcome?.dataSet);
      expect(reader.welcome?.dataSet).toMatch(/^[A-Za-z0-9_-]{22}$/);
      expect(reader.welcome?.dataSet).not.toBe(original.welcome?.dataSet);
      original.close();
      const page = expectCase(
        await reader.request({ case: "history", value: { conversationId: "dm:alice~bob", limit: 1000 } }),
        "history",
      );
      const seqs = page.messages.map((m) => Number(m.seq));
      // One commit's state: seqs 1..n, no gap, each the message acked with that seq, nothing invented.
      expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 1));
      for (const m of page.messages) expect(acked.get(m.clientMsgId)).toBe(m.seq);
      // Every message acked before the backup began is in it.
      const held = new Set(page.messages.map((m) => m.clientMsgId));
      expect([...ackedAtBackup!.keys()].filter((id) => !held.has(id))).toEqual([]);
      // The copy is a working database: the next send follows on.
      const next = expectCase(
        await reader.request({
          case: "send",
          value: { target: { case: "toUser", value: "bob" }, clientMsgId: "restored", body: "restored" },
        }),
        "ack",
      );
      expect(Number(next.seq)).toBe(seqs.length + 1);
      reader.close();
    } finally {
      await restored.dispose();
    }
  });

  it("a copy whose writes fail exits non-zero, says why, and removes its partial copy", async () => {
    // A real write failure without a small disk: a file size limit of 8 KiB (EFBIG past it; SIGXFSZ,
    // which would kill the process instead, ignored as a shell passes it on).
    const out = join(scratch, "limited.mdb");
    const limited = await new Promise<{ code: number; stderr: string }>((resolve) => {
      execFile(
        "bash",
        ["-c", 'trap "" XFSZ; ulimit -f 8; exec "$0" "$@"', process.execPath, cliPath, "backup"].concat([
          "--data-dir",
          server.dataDir,
          "--out",
          out,
        ]),
        (err, _stdout, stderr) =>
          resolve({ code: typeof err?.code === "number" ? err.code : err ? 1 : 0, stderr }),
      );
    });
    expect(limited.code).not.toBe(0);
    expect(limited.stderr).toContain(
      `writing ${out}.partial failed (File too large); the partial copy was removed`,
    );
    expect(existsSync(`${out}.partial`)).toBe(false);
    expect(existsSync(out)).toBe(false);
  });

  it("refuses a copy that would leave the server's disk under its reserve, before writing any of it", async () => {
    const out = join(scratch, "reserve.mdb"); // the data dir's disk (both in the temp dir)
    const r = await backup(server.dataDir, out, {
      SWITCHBOARD_DATA_DIR_FREE_BYTES_MIN: String(Number.MAX_SAFE_INTEGER),
    });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(
      /the copy needs about \d+ bytes and .* has \d+ free, of which the server keeps \d+/,
    );
    expect(existsSync(`${out}.partial`)).toBe(false);
    expect(existsSync(out)).toBe(false);
  });

  it("refuses a data dir without a database, naming it", async () => {
    const missing = await backup(join(scratch, "nothing-here"), join(scratch, "x.mdb"));
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain("does not exist");
  });
});
