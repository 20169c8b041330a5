import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { createLogger } from "../../lib/log.js";
import { GroupMembers, isAlive } from "./member-resume.js";

const log = createLogger({ service: "test" });
const dirs: string[] = [];
function file(content?: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), "members-"));
  dirs.push(dir);
  const path = join(dir, "kafka-members.json");
  if (content !== undefined)
    writeFileSync(path, typeof content === "string" ? content : JSON.stringify(content));
  return path;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** The pid of a process that has exited. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", ""]);
  await new Promise((r) => child.once("exit", r));
  return child.pid!;
}

describe("GroupMembers", () => {
  it("offers the member ids of a process that is gone", async () => {
    const path = file({ pid: await deadPid(), members: { "p.sequencer": "m-1", "p.inbox": "m-2" } });
    const members = GroupMembers.open(path, log);
    expect(members.previousMember("p.sequencer")).toBe("m-1");
    expect(members.previousMember("p.inbox")).toBe("m-2");
    expect(members.previousMember("p.other")).toBeUndefined();
  });

  it("offers the ids of a process killed but not reaped yet (a supervisor that restarts at once)", async () => {
    const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60_000)"]);
    await new Promise((r) => child.once("spawn", r));
    child.kill("SIGKILL");
    // Synchronously, so that this process (its parent) cannot reap it meanwhile: a zombie.
    const until = Date.now() + 300;
    while (Date.now() < until && !readFileSync(`/proc/${child.pid}/stat`, "utf8").includes(") Z ")) {}
    expect(readFileSync(`/proc/${child.pid}/stat`, "utf8")).toContain(") Z ");
    expect(isAlive(child.pid!)).toBe(false);
    const path = file({ pid: child.pid, members: { "p.sequencer": "m-1" } });
    expect(GroupMembers.open(path, log).previousMember("p.sequencer")).toBe("m-1");
    await new Promise((r) => child.once("exit", r));
  });

  it("never offers the ids of a process that is still alive: two live consumers must not share one", () => {
    const path = file({ pid: process.ppid, members: { "p.sequencer": "m-1" } });
    expect(GroupMembers.open(path, log).previousMember("p.sequencer")).toBeUndefined();
  });

  it("starts afresh from a missing or unreadable file", () => {
    expect(GroupMembers.open(file(), log).previousMember("p.sequencer")).toBeUndefined();
    expect(GroupMembers.open(file("{not json"), log).previousMember("p.sequencer")).toBeUndefined();
    expect(
      GroupMembers.open(file({ pid: "x", members: {} }), log).previousMember("p.sequencer"),
    ).toBeUndefined();
  });

  it("writes the ids it joined with, under its own pid, and drops a group it left", () => {
    const path = file();
    const members = GroupMembers.open(path, log);
    const listeners: Array<(e: { payload: { memberId: string } }) => void> = [];
    const consumer = {
      events: { GROUP_JOIN: "consumer.group_join" },
      on: (_: string, l: (e: { payload: { memberId: string } }) => void) => listeners.push(l),
    };
    members.track(consumer as never, "p.sequencer");
    members.track(consumer as never, "p.inbox");
    listeners[0]!({ payload: { memberId: "m-1" } });
    listeners[1]!({ payload: { memberId: "m-2" } });
    expect(JSON.parse(readFileSync(path, "utf8"))).toEqual({
      pid: process.pid,
      members: { "p.sequencer": "m-1", "p.inbox": "m-2" },
    });
    members.forget("p.inbox");
    expect(JSON.parse(readFileSync(path, "utf8")).members).toEqual({ "p.sequencer": "m-1" });
  });
});
