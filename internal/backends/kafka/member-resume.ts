/**
 * Rejoining a consumer group as the member a crashed process was.
 *
 * A process killed without leaving its groups stays a member of them until its session times out
 * (10 s). Restarted, it joins as a new member, and the coordinator holds the rebalance until the dead
 * member is expelled: ten seconds in which no message is sequenced. Kafka's remedy is static
 * membership (`group.instance.id`, KIP-345), which kafkajs does not implement. The same effect for a
 * restart: the process keeps the member id the coordinator gave it for each group in a small file and,
 * restarted, joins with that id. The coordinator takes the join as the old member coming back and
 * completes the rebalance at once. An id it no longer knows is answered UNKNOWN_MEMBER_ID, after which
 * kafkajs joins as a new member; nothing else changes, and the ownership epochs (ADR 0002) fence a
 * partition's old and new owner whatever the group protocol does.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import type { Consumer } from "kafkajs";
import type { Logger } from "../../lib/log.js";

/** The part of kafkajs's internal ConsumerGroup this module touches (kafkajs 2.x). */
interface ConsumerGroupInternals {
  groupId: string;
  memberId: string | null;
  joinAndSync(): Promise<void>;
}

/** Member ids to join with, by group id; each is taken by the first join of its group. */
const resumes = new Map<string, string>();
let installed: boolean | undefined;

/**
 * Wraps ConsumerGroup.joinAndSync so that a group's first join uses the id in `resumes`. Returns false
 * (and the caller does without) when kafkajs's internals are not as expected.
 */
function install(): boolean {
  if (installed !== undefined) return installed;
  installed = false;
  const require = createRequire(import.meta.url);
  let proto: Partial<ConsumerGroupInternals> | undefined;
  try {
    proto = (
      require("kafkajs/src/consumer/consumerGroup.js") as { prototype?: Partial<ConsumerGroupInternals> }
    ).prototype;
  } catch {
    return false;
  }
  const joinAndSync = proto?.joinAndSync;
  if (proto === undefined || typeof joinAndSync !== "function") return false;
  proto.joinAndSync = function (this: ConsumerGroupInternals) {
    const resume = resumes.get(this.groupId);
    if (resume !== undefined) {
      resumes.delete(this.groupId);
      if (this.memberId === null) this.memberId = resume;
    }
    return joinAndSync.call(this);
  };
  installed = true;
  return true;
}

interface MemberFileContent {
  pid: number;
  members: Record<string, string>;
}

/**
 * Whether process `pid` still runs. A process killed but not yet reaped by its parent (a zombie: a
 * supervisor that restarts it before it handled SIGCHLD) still answers signal 0, but holds no group
 * membership any more: on Linux its state in /proc says so.
 */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return true; // no /proc (not Linux), or it is gone right now: signal 0 said it was there
  }
  // "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last ")".
  const state = stat.charAt(stat.lastIndexOf(")") + 2);
  return state !== "Z" && state !== "X";
}

/**
 * The member ids of this process's consumer groups, kept in `path`. Ids written by a process that is
 * still alive (another process sharing the directory, or a paused one) are never reused: two live
 * consumers must not share a member id.
 */
export class GroupMembers {
  private readonly previous: Map<string, string>;
  private readonly current = new Map<string, string>();
  private writable = true;

  private constructor(
    private readonly path: string,
    private readonly log: Logger,
    previous: Map<string, string>,
  ) {
    this.previous = previous;
  }

  static open(path: string, log: Logger): GroupMembers {
    let content: MemberFileContent | undefined;
    try {
      content = JSON.parse(readFileSync(path, "utf8")) as MemberFileContent;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT")
        log.warn("ignoring an unreadable consumer-group member file", { path, err });
    }
    const usable =
      content !== undefined &&
      Number.isInteger(content.pid) &&
      (content.pid === process.pid || !isAlive(content.pid)) &&
      typeof content.members === "object";
    return new GroupMembers(path, log, new Map(usable ? Object.entries(content!.members) : []));
  }

  /** The member id a previous process of this file had in `groupId`, which the next join takes. */
  previousMember(groupId: string): string | undefined {
    return this.previous.get(groupId);
  }

  /**
   * Call before `consumer.run`: its first join uses the member id this file remembers for `groupId`,
   * and every join's id is remembered for the next process.
   */
  track(consumer: Consumer, groupId: string): void {
    const resume = this.previous.get(groupId);
    if (resume !== undefined && install()) resumes.set(groupId, resume);
    consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
      this.current.set(groupId, payload.memberId);
      this.save();
    });
  }

  /** After `groupId` was left cleanly: a successor joins as a new member. */
  forget(groupId: string): void {
    resumes.delete(groupId);
    if (this.current.delete(groupId)) this.save();
  }

  private save(): void {
    if (!this.writable) return;
    const content: MemberFileContent = { pid: process.pid, members: Object.fromEntries(this.current) };
    const tmp = `${this.path}.${process.pid}.tmp`;
    try {
      mkdirSync(dirname(this.path), { recursive: true });
      writeFileSync(tmp, JSON.stringify(content));
      renameSync(tmp, this.path);
    } catch (err) {
      this.writable = false;
      this.log.warn("cannot keep consumer-group member ids; a restart after a crash waits out the session", {
        path: this.path,
        err,
      });
    }
  }
}
