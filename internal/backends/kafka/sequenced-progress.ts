/**
 * How far the sequencers have taken the drafts partitions: whether every draft written to a
 * conversation's partition before a given moment has been sequenced (stored, or refused) by its
 * owner. A resend refused for want of permission through another process than its first
 * transmission's asks this before it looks the key up (ADR 0001, "A resend that overtakes its first
 * transmission"): the first transmission may still be in the log, unsequenced, and be stored after
 * all, since it counts at its place in the partition, before the change that refused the resend.
 *
 * A draft is taken once the sequencer group's committed offset of its partition passed it: an owner
 * resolves a batch's offsets only once its rows (the dedupe rows among them) are durable and its epoch
 * checked, and commits only what it resolved (ADR 0002). One poll of the partitions' ends and of the
 * group's offsets at a time serves every waiter of the process, so that refused resends, however
 * many, cost the broker two requests per poll interval.
 */
import { type Admin, Partitioners, type PartitionMetadata } from "kafkajs";
import type { Logger } from "../../lib/log.js";

export interface SequencedProgressOptions {
  admin: Admin;
  draftsTopic: string;
  /** The sequencers' consumer group. */
  groupId: string;
  /** Between two polls while anyone waits. */
  pollMs: number;
  log: Logger;
}

interface Waiter {
  key: string;
  /** The partition's end, read after the waiter came: drafts before it are what it waits for. */
  end: number | undefined;
  deadlineMs: number;
  settle: (caughtUp: boolean) => void;
}

/** At most this many waiters at once; more are answered "not caught up" at once (then retried). */
const WAITERS_MAX = 10_000;

export class SequencedProgress {
  private readonly waiters = new Set<Waiter>();
  private polling: Promise<void> | undefined;
  private closed = false;
  private readonly partitioner = Partitioners.DefaultPartitioner();

  constructor(private readonly o: SequencedProgressOptions) {}

  /**
   * True once every draft keyed `key` (a conversation id) written before the call has been taken by
   * its partition's owner; false if that has not happened within `timeoutMs` (or the process stops).
   */
  caughtUp(key: string, timeoutMs: number): Promise<boolean> {
    if (this.closed || this.waiters.size >= WAITERS_MAX) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      this.waiters.add({ key, end: undefined, deadlineMs: Date.now() + timeoutMs, settle: resolve });
      this.polling ??= this.poll().finally(() => {
        this.polling = undefined;
      });
    });
  }

  close(): void {
    this.closed = true;
    for (const w of this.waiters) w.settle(false);
    this.waiters.clear();
  }

  private async poll(): Promise<void> {
    while (this.waiters.size > 0 && !this.closed) {
      // Waiters that came before this read get their ends from it: the drafts written before them
      // are below it (and those written meanwhile are waited for too, which costs only a poll).
      const fresh = [...this.waiters].filter((w) => w.end === undefined);
      try {
        const ends = await this.o.admin.fetchTopicOffsets(this.o.draftsTopic);
        const endOf = new Map(ends.map((e) => [e.partition, Number(e.high)]));
        for (const w of fresh) w.end = endOf.get(this.partitionOf(w.key, ends.length)) ?? 0;
        const [committed] = await this.o.admin.fetchOffsets({
          groupId: this.o.groupId,
          topics: [this.o.draftsTopic],
        });
        const taken = new Map((committed?.partitions ?? []).map((p) => [p.partition, Number(p.offset)]));
        for (const w of this.waiters) {
          if (w.end === undefined) continue;
          // -1: the group never committed here; then only an empty partition is taken.
          const at = taken.get(this.partitionOf(w.key, ends.length)) ?? -1;
          if (at >= w.end) this.settle(w, true);
        }
      } catch (err) {
        // The waiters' deadlines bound what a poll the broker did not answer costs them.
        this.o.log.warn("sequenced progress: poll failed", { err, waiters: this.waiters.size });
      }
      const now = Date.now();
      for (const w of this.waiters) if (now >= w.deadlineMs) this.settle(w, false);
      if (this.waiters.size > 0) await new Promise((r) => setTimeout(r, this.o.pollMs));
    }
  }

  private settle(w: Waiter, caughtUp: boolean): void {
    this.waiters.delete(w);
    w.settle(caughtUp);
  }

  /** The partition the drafts producer (kafkajs's default partitioner) gives this key. */
  private partitionOf(key: string, partitions: number): number {
    const partitionMetadata = Array.from(
      { length: partitions },
      (_, partitionId): PartitionMetadata => ({
        partitionErrorCode: 0,
        partitionId,
        leader: 0,
        replicas: [],
        isr: [],
      }),
    );
    return this.partitioner({
      topic: this.o.draftsTopic,
      partitionMetadata,
      message: { key, value: null },
    });
  }
}
