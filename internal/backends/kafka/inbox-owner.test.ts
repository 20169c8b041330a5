import type { EachBatchPayload, IHeaders } from "kafkajs";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../lib/log.js";
import type { InboxDelivery, InboxEntry, OwnershipStore } from "../types.js";
import { encodeMessage } from "./codec.js";
import {
  DRAFTS_STREAM,
  INBOX_RECIPIENTS_HEADER,
  InboxOwner,
  REDELIVERY_HEADER,
  SEQUENCER_EPOCH_HEADER,
  sequencerEpochHeader,
} from "./inbox-owner.js";

const A = 1_000n; // the fenced-out sequencer's epoch
const B = 2_000n; // its successor's
const DRAFTS = 3;

interface Sent {
  seq: number;
  epoch?: bigint;
  redelivery?: boolean;
}

/** One inbox record per message, for users ann and ben (both placed in partition 0 here). */
function batchOf(firstOffset: number, sent: Sent[]): EachBatchPayload {
  const messages = sent.map((s, i) => {
    const headers: IHeaders = { [INBOX_RECIPIENTS_HEADER]: Buffer.from("ann\nben") };
    if (s.epoch !== undefined) headers[SEQUENCER_EPOCH_HEADER] = sequencerEpochHeader(DRAFTS, s.epoch);
    if (s.redelivery) headers[REDELIVERY_HEADER] = "1";
    const value = encodeMessage({
      conversationId: "g:1",
      seq: s.seq,
      messageId: String(900 + s.seq),
      sender: "cat",
      clientMsgId: `c${s.seq}`,
      body: `m${s.seq}`,
      createdAtMs: 1,
    });
    return { offset: String(firstOffset + i), key: null, value, headers };
  });
  return {
    batch: {
      topic: "inbox",
      partition: 0,
      highWatermark: String(firstOffset + sent.length),
      messages,
    },
    resolveOffset: () => undefined,
    commitOffsetsIfNecessary: async () => undefined,
    heartbeat: async () => undefined,
    isStale: () => false,
  } as unknown as EachBatchPayload;
}

/** An inbox owner over an in-memory store; counts index look-ups and epoch reads. */
function owner(draftsEpoch: bigint | undefined, failWrites = 0) {
  let failuresLeft = failWrites;
  let nextEpoch = 5n;
  /** The epoch of each write asked for, failed ones included. */
  const writeEpochs: bigint[] = [];
  const index = new Map<string, number>();
  const heads = new Map<string, { head: number; appliedOffset: number }>();
  const rows: InboxEntry[] = [];
  const delivered: InboxDelivery[] = [];
  const rechecked: string[][] = [];
  const counts = { lookups: 0, epochReads: 0 };
  const key = (e: { userId: string; conversationId: string; seq: number }) =>
    `${e.userId}\u0000${e.conversationId}\u0000${e.seq}`;
  const store = {
    async firstLog(log: string) {
      return log;
    },
    async ownedHeads(users: string[]) {
      return new Map(users.map((u) => [u, { ...(heads.get(u) ?? { head: 0, appliedOffset: -1 }) }]));
    },
    async recorded(keys: Array<{ userId: string; conversationId: string; seq: number }>) {
      counts.lookups++;
      return new Map(keys.map(key).flatMap((k) => (index.has(k) ? [[k, index.get(k)!] as const] : [])));
    },
    async writeOwned(
      entries: InboxEntry[],
      h: Map<string, { head: number; appliedOffset: number }>,
      _before: unknown,
      epoch: bigint,
    ) {
      writeEpochs.push(epoch);
      if (failuresLeft-- > 0) throw new Error("write timed out");
      rows.push(...entries);
      for (const e of entries) index.set(key(e), e.cursor);
      for (const [u, v] of h) heads.set(u, { ...v });
    },
  };
  const ownership: OwnershipStore = {
    claim: async () => nextEpoch++,
    current: async (stream, partition) => {
      if (stream !== DRAFTS_STREAM) return nextEpoch - 1n; // the newest claim
      counts.epochReads++;
      return partition === DRAFTS ? draftsEpoch : undefined;
    },
    close: async () => undefined,
  };
  const make = () =>
    new InboxOwner({
      kafka: {} as never,
      groupId: "inbox",
      inboxTopic: "inbox",
      store,
      ownership,
      indexTtlSeconds: 60,
      handler: {
        deliver: async (d) => {
          delivered.push(...d);
        },
        membershipChanged: () => undefined,
        recheckInboxes: (userIds) => {
          rechecked.push([...userIds]);
        },
      },
      log: createLogger({ test: "inbox-owner" }),
    });
  const apply = (o: InboxOwner, payload: EachBatchPayload) =>
    (o as unknown as { applyBatch(p: EachBatchPayload): Promise<void> }).applyBatch(payload);
  /** Each user's (seq, cursor) pairs in the order their rows were written. */
  const inboxOf = (user: string) => rows.filter((r) => r.userId === user).map((r) => [r.seq, r.cursor]);
  return { make, apply, inboxOf, delivered, rechecked, counts, index, heads, writeEpochs };
}

describe("inbox owner: a fenced-out sequencer's late copy", () => {
  it("an unmarked record under an older epoch after the successor's re-emission adds no entry", async () => {
    const t = owner(A);
    const o = t.make();
    await t.apply(
      o,
      batchOf(0, [
        { seq: 1, epoch: A },
        { seq: 2, epoch: A },
      ]),
    );
    // B re-emits seq 2 (marked) and sequences 3; A's retried produce of seq 2 lands after them.
    await t.apply(
      o,
      batchOf(2, [
        { seq: 2, epoch: B, redelivery: true },
        { seq: 3, epoch: B },
      ]),
    );
    await t.apply(o, batchOf(4, [{ seq: 2, epoch: A }]));
    // And within one batch too.
    await t.apply(
      o,
      batchOf(5, [
        { seq: 4, epoch: B },
        { seq: 4, epoch: A },
      ]),
    );
    for (const u of ["ann", "ben"])
      expect(t.inboxOf(u)).toEqual([
        [1, 1],
        [2, 2],
        [3, 3],
        [4, 4],
      ]);
    const handed = t.delivered.flatMap((d) => d.recipients.map((r) => `${r.userId}/${d.message.seq}`));
    expect(handed.length).toBe(new Set(handed).size);
  });

  it("an owner that never saw the successor's records reads its epoch from the drafts partition's owner row", async () => {
    const t = owner(B);
    const o = t.make();
    // The successor's records were applied by a former owner of this inbox partition; this one
    // starts where that one committed (its heads say 3 applied) and meets A's late copy first.
    await t.apply(
      o,
      batchOf(0, [
        { seq: 1, epoch: B },
        { seq: 2, epoch: B },
        { seq: 3, epoch: B },
      ]),
    );
    const fresh = t.make();
    await t.apply(
      fresh,
      batchOf(3, [
        { seq: 3, epoch: A },
        { seq: 4, epoch: B },
      ]),
    );
    expect(t.inboxOf("ann").map(([seq]) => seq)).toEqual([1, 2, 3, 4]);
    expect(t.counts.epochReads).toBe(2); // once per owner (generation), not per batch
  });

  it("costs nothing in the steady state: no index look-up, one epoch read per drafts partition", async () => {
    const t = owner(B);
    const o = t.make();
    for (let i = 0; i < 5; i++) await t.apply(o, batchOf(i, [{ seq: i + 1, epoch: B }]));
    expect(t.counts).toEqual({ lookups: 0, epochReads: 1 });
    expect(t.inboxOf("ben").map(([seq]) => seq)).toEqual([1, 2, 3, 4, 5]);
  });

  it("records without the header (a sequencer of the version before) are handled as before", async () => {
    const t = owner(undefined);
    const o = t.make();
    await t.apply(o, batchOf(0, [{ seq: 1 }, { seq: 2 }, { seq: 2, redelivery: true }]));
    expect(t.inboxOf("ann").map(([seq]) => seq)).toEqual([1, 2]);
    expect(t.counts).toEqual({ lookups: 1, epochReads: 0 });
  });
});

describe("inbox owner: records a former owner applied", () => {
  it("skips them and has their users' sessions look at their inboxes, once per batch; not for its own", async () => {
    const t = owner(B);
    const former = t.make();
    await t.apply(
      former,
      batchOf(0, [
        { seq: 1, epoch: B },
        { seq: 2, epoch: B },
      ]),
    );
    // Its offsets were not committed (or it stopped before handing them on): a successor starts
    // over from offset 0, its heads read from storage say both records are applied.
    const successor = t.make();
    await t.apply(
      successor,
      batchOf(0, [
        { seq: 1, epoch: B },
        { seq: 2, epoch: B },
        { seq: 3, epoch: B },
      ]),
    );
    for (const u of ["ann", "ben"]) expect(t.inboxOf(u).map(([seq]) => seq)).toEqual([1, 2, 3]);
    expect(t.delivered.map((d) => d.message.seq)).toEqual([1, 2, 3]);
    expect(t.rechecked).toEqual([["ann", "ben"]]);
    // Its own records it knows it handed on: a batch read again (a retried fetch) asks for nothing.
    await t.apply(successor, batchOf(2, [{ seq: 3, epoch: B }]));
    expect(t.rechecked).toHaveLength(1);
    expect(t.inboxOf("ann").map(([seq]) => seq)).toEqual([1, 2, 3]);
  });
});

describe("inbox owner: index rows above the head it works from", () => {
  it("are a failed write's: a re-delivered record whose first copy only that write applied gets its cursor again", async () => {
    const t = owner(undefined);
    const o = t.make();
    await t.apply(o, batchOf(0, [{ seq: 1 }, { seq: 2 }]));
    // A write of seq 3 failed part-way: its index rows (and heads) landed, its stream rows did not,
    // and the heads read back gave way to the ones before (CassandraInboxStore.ownedHeads). Its
    // first copy was in that batch; the sequencer's re-emission (marked) is what is read now.
    for (const u of ["ann", "ben"]) {
      t.index.set(`${u}\u0000g:1\u00003`, 3);
      t.heads.set(u, { head: 2, appliedOffset: 1 });
    }
    const successor = t.make();
    await t.apply(successor, batchOf(3, [{ seq: 3, redelivery: true }]));
    for (const u of ["ann", "ben"])
      expect(t.inboxOf(u)).toEqual([
        [1, 1],
        [2, 2],
        [3, 3],
      ]);
    // At or below the head, an index row means applied: the same re-delivery again adds nothing.
    await t.apply(successor, batchOf(4, [{ seq: 3, redelivery: true }]));
    expect(t.inboxOf("ann")).toEqual([
      [1, 1],
      [2, 2],
      [3, 3],
    ]);
  });
});

describe("inbox owner: a write that failed", () => {
  it("is retried under a newer epoch (its cells must lose to the retry's, which same-epoch writes would not)", async () => {
    const t = owner(undefined, 1);
    const o = t.make();
    await expect(t.apply(o, batchOf(0, [{ seq: 1 }, { seq: 2 }]))).rejects.toThrow("write timed out");
    await t.apply(o, batchOf(0, [{ seq: 1 }]));
    await t.apply(o, batchOf(1, [{ seq: 2 }]));
    expect(t.writeEpochs).toEqual([5n, 6n, 6n]);
    for (const u of ["ann", "ben"])
      expect(t.inboxOf(u)).toEqual([
        [1, 1],
        [2, 2],
      ]);
  });
});
