import type { Message } from "kafkajs";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../lib/log.js";
import { shardOf } from "../../lib/shard.js";
import type { StoredMessage } from "../types.js";
import type { BatchProducer } from "./batch-producer.js";
import { INBOX_RECIPIENTS_HEADER, parseSequencerEpoch, SEQUENCER_EPOCH_HEADER } from "./inbox-owner.js";
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
