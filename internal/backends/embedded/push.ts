/**
 * The embedded push job store (jobs, the keys of jobs added lately) and dead letters.
 */
import type { Database, RootDatabase } from "lmdb";
import type { PushDeadLetter, PushDeadLetterStore, PushJob, PushJobStore } from "../types.js";
import { deadLetterId, parseDeadLetterId } from "../types.js";
import type { Guard, Key } from "./store.js";

/** Dead letters kept at most; the oldest go first. */
const PUSH_DEAD_LETTERS_MAX = 10_000;

/** Stored by [deadAtMs, job id], so they sort by when they failed. */
export type StoredDeadLetter = Omit<PushDeadLetter, "id">;

/** Records a dead letter and drops the oldest beyond the bound; inside the caller's transaction. */
function recordDeadLetter(
  dead: Database<StoredDeadLetter, Key>,
  job: PushJob,
  error: string,
  deadAtMs: number,
): PushDeadLetter {
  dead.put([deadAtMs, job.id], { job, error, deadAtMs });
  const excess = dead.getCount() - PUSH_DEAD_LETTERS_MAX;
  if (excess > 0) for (const key of dead.getKeys({ limit: excess })) dead.remove(key);
  return { id: deadLetterId(deadAtMs, job.id), job, error, deadAtMs };
}

/** How long, and how many at most, the keys of added push jobs are kept to refuse the same job again. */
export const PUSH_JOB_KEYS_KEPT_MS = 3_600_000;
export const PUSH_JOB_KEYS_MAX = 100_000;

export class EmbeddedPushJobs implements PushJobStore {
  constructor(
    private readonly root: RootDatabase,
    private readonly jobs: Database<PushJob, Key>,
    /** key -> when it was added */
    private readonly keys: Database<number, Key>,
    /** [when it was added, key]: the keys oldest first, to let them go */
    private readonly keysByTime: Database<true, Key>,
    private readonly dead: Database<StoredDeadLetter, Key>,
    private readonly guard: Guard,
    private readonly keysMax: number,
  ) {}
  /** Keys kept, counted once and then kept true here (this process alone writes them). */
  private keyCount: number | undefined;
  async add(job: PushJob) {
    const key = job.key;
    if (key === undefined) {
      await this.put(job);
      return true;
    }
    const now = Date.now();
    return this.guard(() =>
      this.root.transaction(() => {
        const added = this.keys.get(key);
        if (added !== undefined && added > now - PUSH_JOB_KEYS_KEPT_MS) return false;
        let count = this.keyCount ?? this.keysByTime.getCount();
        if (added !== undefined) {
          this.keysByTime.remove([added, key]);
          count--;
        }
        // The expired and the oldest beyond the bound go, a few per job so no add pays for many.
        let excess = count + 1 - this.keysMax;
        for (const old of this.keysByTime.getKeys({ limit: Math.max(excess, 8) })) {
          const [at, oldKey] = old as [number, string];
          if (excess <= 0 && at > now - PUSH_JOB_KEYS_KEPT_MS) break;
          this.keysByTime.remove(old);
          this.keys.remove(oldKey);
          count--;
          excess--;
        }
        this.keys.put(key, now);
        this.keysByTime.put([now, key], true);
        this.jobs.put(job.id, job);
        this.keyCount = count + 1;
        return true;
      }),
    );
  }
  async put(job: PushJob) {
    await this.guard(() => this.jobs.put(job.id, job));
  }
  async remove(id: string) {
    await this.guard(() => this.jobs.remove(id));
  }
  async list(limit: number) {
    const out: PushJob[] = [];
    for (const { value } of this.jobs.getRange({ limit })) out.push(value);
    return out;
  }
  async deadLetter(job: PushJob, error: string) {
    await this.guard(() =>
      this.root.transaction(() => {
        this.jobs.remove(job.id);
        recordDeadLetter(this.dead, job, error, Date.now());
      }),
    );
  }
  async close(): Promise<void> {}
}

export class EmbeddedPushDeadLetters implements PushDeadLetterStore {
  constructor(
    private readonly root: RootDatabase,
    private readonly dead: Database<StoredDeadLetter, Key>,
    private readonly guard: Guard,
  ) {}
  async add(job: PushJob, error: string) {
    return this.guard(() => this.root.transaction(() => recordDeadLetter(this.dead, job, error, Date.now())));
  }
  async list(limit: number, beforeId?: string) {
    const before = beforeId === undefined ? undefined : parseDeadLetterId(beforeId);
    if (beforeId !== undefined && !before) return [];
    const out: PushDeadLetter[] = [];
    const range = this.dead.getRange({
      reverse: true,
      limit,
      ...(before ? { start: [before.deadAtMs, before.jobId], exclusiveStart: true } : {}),
    });
    for (const { value } of range) out.push({ ...value, id: deadLetterId(value.deadAtMs, value.job.id) });
    return out;
  }
  async take(ids: string[]) {
    const keys = ids.map(parseDeadLetterId).filter((k) => k !== undefined);
    // One transaction reads and removes: a dead letter goes to exactly one of two concurrent takers.
    return this.guard(() =>
      this.root.transaction(() => {
        const taken: PushDeadLetter[] = [];
        for (const k of keys) {
          const value = this.dead.get([k.deadAtMs, k.jobId]);
          if (!value) continue;
          this.dead.remove([k.deadAtMs, k.jobId]);
          taken.push({ ...value, id: deadLetterId(value.deadAtMs, value.job.id) });
        }
        return taken;
      }),
    );
  }
  async close(): Promise<void> {}
}
