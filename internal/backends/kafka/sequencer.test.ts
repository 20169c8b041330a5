import type { Message } from "kafkajs";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../lib/log.js";
import { shardOf } from "../../lib/shard.js";
import type { StoredMessage } from "../types.js";
import type { BatchProducer } from "./batch-producer.js";
import { INBOX_RECIPIENTS_HEADER, parseSequencerEpoch, SEQUENCER_EPOCH_HEADER } from "./inbox-owner.js";
import { DEPARTURES_LOOKBACK_MS } from "./seq-audience.js";
import { DRAFTS_STREAM, Sequencer } from "./sequencer.js";

describe("sequencer: inbox records", () => {
  it("name the drafts partition and the epoch they were sequenced under", async () => {
    const sent: Array<{ topic: string; message: Message }> = [];
    const producer = {
      send: async (topic: string, message: Message) => {
        sent.push({ topic, message });
      },
    } as unknown as BatchProducer;
    const claimed: Array<[string, number]> = [];
    const sequencer = new Sequencer({
      kafka: {} as never,
      groupId: "sequencer",
      draftsTopic: "messages",
      repliesTopic: "replies",
      producer,
      store: {} as never,
      ownership: {
        claim: async (stream, partition) => {
          claimed.push([stream, partition]);
          return 77_000_001n;
        },
        current: async () => 77_000_001n,
        close: async () => undefined,
      },
      messages: {} as never,
      membership: {} as never,
      pending: new Map(),
      dedupeWindowSeconds: 3600,
      firstAttemptMarginMs: 10_000,
      log: createLogger({ test: "sequencer" }),
      inbox: { topic: "inbox", partitions: 4 },
    });
    const internals = sequencer as unknown as {
      partitions: { claim(partition: number): Promise<{ epochHeader: string }> };
      emit(
        m: StoredMessage,
        audience: string[],
        redelivery: boolean,
        trace: undefined,
        epochHeader: string,
      ): Array<Promise<void>>;
    };
    const state = await internals.partitions.claim(3);
    expect(claimed).toEqual([[DRAFTS_STREAM, 3]]);
    const users = ["ann", "ben", "cat", "dan", "eve", "fay", "gus", "hal"];
    const message: StoredMessage = {
      conversationId: "g:1",
      seq: 9,
      messageId: "909",
      sender: "ann",
      clientMsgId: "c9",
      body: "hi",
      createdAtMs: 1,
    };
    await Promise.all(internals.emit(message, users, false, undefined, state.epochHeader));
    expect(sent.length).toBe(new Set(users.map((u) => shardOf(u, 4))).size);
    for (const { topic, message: record } of sent) {
      expect(topic).toBe("inbox");
      expect(record.headers?.[INBOX_RECIPIENTS_HEADER]).toEqual(expect.any(String));
      expect(parseSequencerEpoch(String(record.headers?.[SEQUENCER_EPOCH_HEADER]))).toEqual({
        partition: 3,
        epoch: 77_000_001n,
      });
    }
  });
});

describe("sequencer: membership bounds of a batch", () => {
  it("binds announcements with no message between them once, and reads no departure older than the batch's oldest record less DEPARTURES_LOOKBACK_MS", async () => {
    const calls: string[] = [];
    const empty = { members: [], departed: [] };
    const sequencer = new Sequencer({
      kafka: {} as never,
      groupId: "sequencer",
      draftsTopic: "messages",
      repliesTopic: "replies",
      producer: {} as never,
      store: {} as never,
      ownership: {
        claim: async () => 1n,
        current: async () => 1n,
        close: async () => undefined,
      },
      messages: {} as never,
      membership: {
        getConversation: async () => undefined,
        membershipSeqs: async (id, since) => {
          calls.push(`read ${id} since ${since}`);
          return empty;
        },
        boundChanges: async (id, atMs, head, since) => {
          calls.push(`bind ${id} at ${atMs} head ${head} since ${since}`);
          return empty;
        },
      },
      pending: new Map(),
      dedupeWindowSeconds: 3600,
      firstAttemptMarginMs: 10_000,
      log: createLogger({ test: "sequencer" }),
    });
    const internals = sequencer as unknown as {
      partitions: { claim(partition: number): Promise<unknown> };
      audiences(state: unknown, records: unknown[], done: unknown): Promise<unknown>;
    };
    const state = await internals.partitions.claim(0);
    const t0 = 1_800_000_000_000;
    const draft = (conversationId: string, messageId: string, atMs: number) => ({
      kind: "draft",
      draft: {
        conversationId,
        messageId,
        seq: 0,
        sender: "ann",
        clientMsgId: messageId,
        body: "",
        createdAtMs: atMs,
      },
      resendsAfterMs: undefined,
      atMs,
    });
    const announcement = (conversationId: string, atMs: number) => ({
      kind: "membership",
      conversationId,
      atMs,
    });
    const records = [
      draft("g:1", "m1", t0 + 5_000),
      draft("g:2", "m2", t0), // the oldest record of the batch
      announcement("g:1", t0 + 6_000),
      announcement("g:1", t0 + 9_000),
      announcement("g:1", t0 + 7_000), // three in a row: bound once, at the latest
      draft("g:1", "m3", t0 + 10_000),
      announcement("g:1", t0 + 11_000),
    ];
    const done = {
      headsBefore: new Map([
        ["g:1", 4],
        ["g:2", 8],
      ]),
      results: [
        { draftId: "m1", result: { message: { seq: 5 } } },
        { draftId: "m2", result: { message: { seq: 9 } } },
        { draftId: "m3", result: { message: { seq: 6 } } },
      ],
    };
    await internals.audiences(state, records, done);
    const since = t0 - DEPARTURES_LOOKBACK_MS;
    expect(calls.sort()).toEqual(
      [
        `bind g:1 at ${t0 + 9_000} head 5 since ${since}`,
        `bind g:1 at ${t0 + 11_000} head 6 since ${since}`,
        `read g:2 since ${since}`,
      ].sort(),
    );
  });
});
