/**
 * PushDeadLetterStore over `push_dead_letters` (partition: the hour the job failed; clustering: when,
 * then the job id, both descending: newest first). An hour's partition bounds what one outage of a provider piles into
 * one partition; every row expires after a week (the table's default TTL), so the table needs no
 * sweeper. Listing walks the hours back from now until it has enough. Taking one is a read and a
 * conditional delete, so of two concurrent replays of the same dead letter only one gets it (an
 * operator's action, rare: the Paxos round is no cost here).
 */
import {
  deadLetterId,
  type PushDeadLetter,
  type PushDeadLetterStore,
  type PushJob,
  parseDeadLetterId,
} from "../types.js";
import { type Session, toNumber, toText } from "./session.js";

const HOUR_MS = 3_600_000;
/** How long a dead letter is kept: the table's default_time_to_live (migration 10). */
export const PUSH_DEAD_LETTER_TTL_SECONDS = 7 * 24 * 3600;
const HOURS_KEPT = PUSH_DEAD_LETTER_TTL_SECONDS / 3600;
const HOURS_PER_READ = 24;

export class CassandraPushDeadLetters implements PushDeadLetterStore {
  private readonly q: ReturnType<typeof statements>;

  constructor(private readonly s: Session) {
    this.q = statements(s);
  }

  async add(job: PushJob, error: string): Promise<PushDeadLetter> {
    const deadAtMs = Date.now();
    await this.s.execute(
      "push_dead_letters: add",
      this.q.add,
      [hourOf(deadAtMs), new Date(deadAtMs), job.id, JSON.stringify(job), error],
      { idempotent: true },
    );
    return { id: deadLetterId(deadAtMs, job.id), job, error, deadAtMs };
  }

  async list(limit: number, beforeId?: string): Promise<PushDeadLetter[]> {
    const before = beforeId === undefined ? undefined : parseDeadLetterId(beforeId);
    if (beforeId !== undefined && !before) return [];
    const newestHour = hourOf(before?.deadAtMs ?? Date.now());
    const oldestHour = hourOf(Date.now()) - HOURS_KEPT;
    const out: PushDeadLetter[] = [];
    // Most hours hold none: a day's hours are read at once, newest first, until the page is full.
    for (let hour = newestHour; hour > oldestHour && out.length < limit; hour -= HOURS_PER_READ) {
      const hours = Array.from({ length: Math.min(HOURS_PER_READ, hour - oldestHour) }, (_, i) => hour - i);
      const pages = await Promise.all(
        hours.map((h) =>
          before && h === newestHour
            ? this.s.all("push_dead_letters: list before", this.q.listBefore, [
                h,
                new Date(before.deadAtMs),
                before.jobId,
                limit,
              ])
            : this.s.all("push_dead_letters: list", this.q.list, [h, limit]),
        ),
      );
      for (const row of pages.flat()) {
        if (out.length >= limit) break;
        out.push(fromRow(row));
      }
    }
    return out;
  }

  async take(ids: string[]): Promise<PushDeadLetter[]> {
    const taken: PushDeadLetter[] = [];
    for (const id of ids) {
      const key = parseDeadLetterId(id);
      if (!key) continue;
      const params = [hourOf(key.deadAtMs), new Date(key.deadAtMs), key.jobId];
      const row = (
        await this.s.execute("push_dead_letters: read", this.q.read, params, { idempotent: true })
      ).first();
      if (!row) continue;
      const removed = await this.s.execute("push_dead_letters: take", this.q.take, params, {
        idempotent: false,
      });
      if (removed.wasApplied()) taken.push(fromRow(row));
    }
    return taken;
  }

  async close(): Promise<void> {}
}

const hourOf = (ms: number) => Math.floor(ms / HOUR_MS);

function fromRow(row: { get(name: string): unknown }): PushDeadLetter {
  const deadAtMs = toNumber(row.get("dead_at"), "push_dead_letters.dead_at");
  const job = JSON.parse(toText(row.get("job"), "push_dead_letters.job")) as PushJob;
  return {
    id: deadLetterId(deadAtMs, job.id),
    job,
    error: toText(row.get("error"), "push_dead_letters.error"),
    deadAtMs,
  };
}

function statements(s: Session) {
  const t = s.table("push_dead_letters");
  const columns = "dead_at, job_id, job, error";
  return {
    add: `INSERT INTO ${t} (hour, dead_at, job_id, job, error) VALUES (?, ?, ?, ?, ?)`,
    list: `SELECT ${columns} FROM ${t} WHERE hour = ? LIMIT ?`,
    // Clustering order is (dead_at DESC, job_id DESC), the order listed: "after this one in the list"
    // is the tuple comparison below.
    listBefore: `SELECT ${columns} FROM ${t} WHERE hour = ? AND (dead_at, job_id) < (?, ?) LIMIT ?`,
    read: `SELECT ${columns} FROM ${t} WHERE hour = ? AND dead_at = ? AND job_id = ?`,
    take: `DELETE FROM ${t} WHERE hour = ? AND dead_at = ? AND job_id = ? IF EXISTS`,
  };
}
