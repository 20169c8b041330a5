/**
 * One process per data dir (data-dir-lock.ts), with real processes: a second one is refused while
 * the first runs, and takes the dir once the first was killed with -9.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { HEARTBEAT_MS, type Holder, LOCK_FILE, STALE_MS, stillHeld } from "./data-dir-lock.js";
import { EmbeddedBackends } from "./index.js";
import { Retention } from "./retention.js";

const here = dirname(fileURLToPath(import.meta.url));
/** Bundled next to the dependencies (node_modules/.cache), so `lmdb` resolves from the child. */
const childScript = resolve(
  here,
  "../../../node_modules/.cache/switchboard-tests",
  `lock-child-${process.pid}.mjs`,
);
const dirs: string[] = [];
const children: ChildProcess[] = [];

/**
 * The child: opens the dir, appends one message as `name`, prints what it saw and waits for its stdin
 * to close (then closes the backend and exits 0); prints the error and exits 3 if it cannot open.
 */
const CHILD_SOURCE = `
import { EmbeddedBackends } from ${JSON.stringify(join(here, "index.ts"))};
const [dataDir, name] = process.argv.slice(2);
let backends;
try {
  backends = new EmbeddedBackends({ dataDir });
} catch (err) {
  console.log(JSON.stringify({ error: err.message, reason: err.reason }));
  process.exit(3);
}
const page = await backends.messages.history("c", { limit: 100 });
const { message } = await backends.log.append({
  conversationId: "c", messageId: name, sender: name, clientMsgId: name, body: name, createdAtMs: Date.now(),
});
console.log(JSON.stringify({ opened: true, seq: message.seq, before: page.messages.map((m) => m.messageId) }));
process.stdin.on("end", async () => { await backends.close(); process.exit(0); });
process.stdin.resume();
`;

beforeAll(async () => {
  mkdirSync(dirname(childScript), { recursive: true });
  const entry = `${childScript}.entry.mjs`;
  writeFileSync(entry, CHILD_SOURCE);
  await build({
    entryPoints: [entry],
    outfile: childScript,
    bundle: true,
    platform: "node",
    format: "esm",
    packages: "external",
    logLevel: "error",
  });
  rmSync(entry);
});

afterAll(async () => {
  for (const child of children)
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  rmSync(childScript, { force: true });
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function scratch(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "switchboard-lock-"));
  dirs.push(dir);
  return dir;
}

interface Started {
  child: ChildProcess;
  /** The child's first line, parsed. */
  first: Promise<{ opened?: boolean; seq?: number; before?: string[]; error?: string; reason?: string }>;
  exited: Promise<number | null>;
}

function startChild(dataDir: string, name: string): Started {
  const child = spawn(process.execPath, [childScript, dataDir, name], { stdio: ["pipe", "pipe", "inherit"] });
  children.push(child);
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  const first = new Promise<Record<string, never>>((resolveLine, reject) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const end = out.indexOf("\n");
      if (end >= 0) resolveLine(JSON.parse(out.slice(0, end)));
    });
    void exited.then(() => reject(new Error(`child ${name} exited without a line`)));
  });
  return { child, first, exited };
}

describe("data dir lock", () => {
  it("refuses a second process while the first runs, naming the dir and the holder; a kill -9 frees it", async () => {
    const dataDir = await scratch();
    const a = startChild(dataDir, "A");
    expect(await a.first).toEqual({ opened: true, seq: 1, before: [] });
    const holder = JSON.parse(readFileSync(join(dataDir, LOCK_FILE), "utf8")) as Holder;
    expect(holder.pid).toBe(a.child.pid);

    const b = startChild(dataDir, "B");
    const refused = await b.first;
    expect(await b.exited).toBe(3);
    expect(refused.reason).toBe("DATA_DIR_IN_USE");
    expect(refused.error).toContain(`data dir ${dataDir} is in use`);
    expect(refused.error).toContain(`pid ${a.child.pid} on host`);

    // A crash leaves the lock file behind; its holder is gone, so the next process takes over.
    a.child.kill("SIGKILL");
    await a.exited;
    expect(existsSync(join(dataDir, LOCK_FILE))).toBe(true);
    const c = startChild(dataDir, "C");
    expect(await c.first).toEqual({ opened: true, seq: 2, before: ["A"] }); // A's message kept, not overwritten

    // A clean stop removes the lock file: a copy taken now (stop, copy, start) carries none.
    c.child.stdin!.end();
    expect(await c.exited).toBe(0);
    expect(existsSync(join(dataDir, LOCK_FILE))).toBe(false);
    const d = startChild(dataDir, "D");
    expect(await d.first).toEqual({ opened: true, seq: 3, before: ["A", "C"] });
    d.child.stdin!.end();
    expect(await d.exited).toBe(0);
  });

  it("in one process too, until it is closed", async () => {
    const dataDir = await scratch();
    const first = new EmbeddedBackends({ dataDir });
    expect(() => new EmbeddedBackends({ dataDir })).toThrow(/is in use .*this process has it open/);
    await first.close();
    const second = new EmbeddedBackends({ dataDir });
    await second.close();
  });

  it("is given back when opening fails after it was taken", async () => {
    const dataDir = await scratch();
    const failing = vi.spyOn(Retention.prototype, "start").mockImplementationOnce(() => {
      throw new Error("injected failure late in the constructor");
    });
    expect(() => new EmbeddedBackends({ dataDir })).toThrow("injected failure late in the constructor");
    failing.mockRestore();
    expect(existsSync(join(dataDir, LOCK_FILE))).toBe(false);
    const next = new EmbeddedBackends({ dataDir }); // not "in use": nobody holds it
    await next.close();
  });

  it("names the lock file when it cannot be written, and leaves no temporary file behind", async () => {
    const dataDir = await scratch();
    mkdirSync(join(dataDir, LOCK_FILE)); // the lock file cannot be renamed into place
    expect(() => new EmbeddedBackends({ dataDir })).toThrow(
      new RegExp(`cannot write the lock file ${join(dataDir, LOCK_FILE)}: `),
    );
    expect(readdirSync(dataDir).filter((f) => f.startsWith(LOCK_FILE))).toEqual([LOCK_FILE]);
  });

  it("stops a holder whose lock was taken over (it stalled past the heartbeat's staleness)", async () => {
    const dataDir = await scratch();
    const fatal: unknown[] = [];
    const held = new EmbeddedBackends({ dataDir, onFatal: (err) => fatal.push(err) });
    try {
      // What a successor's takeover leaves: the lock file names another holder.
      const path = join(dataDir, LOCK_FILE);
      const mine = JSON.parse(readFileSync(path, "utf8")) as Holder;
      writeFileSync(path, `${JSON.stringify({ ...mine, token: "successor", pid: mine.pid + 1 })}\n`);
      await new Promise((r) => setTimeout(r, HEARTBEAT_MS + 500));
      expect(fatal).toHaveLength(1);
      expect(String(fatal[0])).toMatch(/no longer this process's/);
    } finally {
      await held.close().catch(() => undefined);
    }
  });

  it("a copy of a running process's data dir (its lock file with it) opens: the lock names the other dir", async () => {
    const dataDir = await scratch();
    const a = startChild(dataDir, "A");
    expect((await a.first).opened).toBe(true);
    const copy = await scratch();
    cpSync(dataDir, copy, { recursive: true });
    const b = startChild(copy, "B");
    expect(await b.first).toEqual({ opened: true, seq: 2, before: ["A"] });
    b.child.stdin!.end();
    a.child.stdin!.end();
    expect(await b.exited).toBe(0);
    expect(await a.exited).toBe(0);
  });

  it("judges a holder it cannot see by pid by its heartbeat, and a pid that is not running as gone", () => {
    const me: Holder = {
      token: "me",
      pid: process.pid,
      host: "h1",
      bootId: "b1",
      pidNamespace: "ns1",
      dir: "1:2",
      sinceMs: 0,
    };
    const now = 1_000_000;
    // Another container or host sharing the volume: alive while it touches the file.
    const elsewhere = { ...me, token: "other", pid: 1, pidNamespace: "ns2" };
    expect(stillHeld(elsewhere, now - 1_000, me, now)).toMatch(/touched the lock 1 s ago/);
    expect(stillHeld(elsewhere, now - STALE_MS, me, now)).toBeUndefined();
    expect(stillHeld({ ...elsewhere, host: "h2", pidNamespace: "ns1" }, now - 1_000, me, now)).toBeDefined();
    expect(
      stillHeld({ ...elsewhere, bootId: "b0", pidNamespace: "ns1" }, now - 1_000, me, now),
    ).toBeDefined();
    // Same host, boot and pid namespace: by pid.
    const parent = { ...me, token: "parent", pid: process.ppid };
    expect(stillHeld(parent, 0, me, now)).toBe("its process is running");
    expect(stillHeld({ ...parent, pid: 2 ** 22 + 17 }, now, me, now)).toBeUndefined(); // no such process
    expect(stillHeld({ ...parent, startTicks: "1", pid: process.ppid }, now, me, now)).toBe(
      existsSync(`/proc/${process.ppid}/stat`) ? undefined : "its process is running", // pid reused
    );
    expect(stillHeld({ ...me, token: "earlier-me" }, now, me, now)).toBeUndefined(); // a restart with this pid
    // A lock file copied from another directory holds nothing here.
    expect(stillHeld({ ...parent, dir: "9:9" }, now, me, now)).toBeUndefined();
  });
});
