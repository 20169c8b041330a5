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
 * many, cost the broker the same few requests per poll interval (kafkajs asks both ends of each
 * partition, the metadata, the group's coordinator and its offsets).
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
  /** The key's partition and that partition's end, read after the waiter came: what it waits for. */
  target: { partition: number; end: number } | undefined;
  settle: (caughtUp: boolean) => void;
  timer: NodeJS.Timeout;
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
   * its partition's owner; false if that has not happened within `timeoutMs` (whatever the broker
   * does meanwhile), or the process stops.
   */
  caughtUp(key: string, timeoutMs: number): Promise<boolean> {
    if (this.closed || this.waiters.size >= WAITERS_MAX) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const waiter: Waiter = {
        key,
        target: undefined,
        settle: resolve,
        timer: setTimeout(() => this.settle(waiter, false), timeoutMs),
      };
      this.waiters.add(waiter);
      this.polling ??= this.poll();
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.waiters) this.settle(w, false);
    await this.polling;
  }

  /** Polls while anyone waits; `polling` is cleared in the same turn as the loop's last check. */
  private async poll(): Promise<void> {
    try {
      for (;;) {
        await this.pollOnce();
        if (this.waiters.size === 0 || this.closed) return;
        await new Promise((r) => setTimeout(r, this.o.pollMs));
        if (this.waiters.size === 0 || this.closed) return;
      }
    } finally {
      this.polling = undefined;
    }
  }

  private async pollOnce(): Promise<void> {
    // Waiters that came before this read get their targets from it: the drafts written before them
    // are below it (and those written meanwhile are waited for too, which costs only a poll).
    const fresh = [...this.waiters].filter((w) => w.target === undefined);
    try {
      const ends = await this.o.admin.fetchTopicOffsets(this.o.draftsTopic);
      const byPartition = new Map(ends.map((e) => [e.partition, e]));
      for (const w of fresh) {
        const partition = this.partitionOf(w.key, ends.length);
        const end = byPartition.get(partition);
        // Nothing left in it (never written, or all of it past retention): nothing to wait for.
        if (!end || Number(end.high) <= Number(end.low)) this.settle(w, true);
        else w.target = { partition, end: Number(end.high) };
      }
      if (![...this.waiters].some((w) => w.target !== undefined)) return;
      const [committed] = await this.o.admin.fetchOffsets({
        groupId: this.o.groupId,
        topics: [this.o.draftsTopic],
      });
      // -1 where the group never committed: nothing of that partition taken yet.
      const taken = new Map((committed?.partitions ?? []).map((p) => [p.partition, Number(p.offset)]));
      for (const w of this.waiters)
        if (w.target && (taken.get(w.target.partition) ?? -1) >= w.target.end) this.settle(w, true);
    } catch (err) {
      // Each waiter's own timer bounds what a poll the broker did not answer costs it.
      this.o.log.warn("sequenced progress: poll failed", { err, waiters: this.waiters.size });
    }
  }

  private settle(w: Waiter, caughtUp: boolean): void {
    if (!this.waiters.delete(w)) return;
    clearTimeout(w.timer);
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
