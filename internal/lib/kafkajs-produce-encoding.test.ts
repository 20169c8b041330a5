import { createRequire } from "node:module";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  encodeProduce,
  encodesExactly,
  fixKafkajsProduceEncoding,
  type ProduceArgs,
} from "./kafkajs-produce-encoding.js";

const require = createRequire(import.meta.url);
/** kafkajs's own Produce v3 request (v4-v7 wrap it), untouched by the fix. */
const kafkajsV3 = require("kafkajs/src/protocol/requests/produce/v3/request.js") as (args: ProduceArgs) => {
  encode(): Promise<{ buffer: Buffer }>;
};
const Long = require("kafkajs/src/utils/long.js") as { fromNumber(n: number): unknown };

async function kafkajsBytes(args: ProduceArgs): Promise<Buffer> {
  return (await kafkajsV3(args).encode()).buffer;
}

afterEach(() => {
  vi.restoreAllMocks();
});

/** A request of one topic (with the acks and timeout kafkajs's broker always passes). */
const oneTopic = (
  topic: string,
  partitions: ProduceArgs["topicData"][number]["partitions"],
): ProduceArgs => ({
  acks: -1,
  timeout: 30_000,
  topicData: [{ topic, partitions }],
});

const body = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31) & 0xff));

/** Request shapes: what the platform sends, and the corners of what kafkajs accepts. */
const CASES: Record<string, ProduceArgs> = {
  "the platform's drafts and replies (idempotent producer, headers, no timestamps)": {
    acks: -1,
    timeout: 30_000,
    producerId: Long.fromNumber(4_321),
    producerEpoch: 3,
    topicData: [
      {
        topic: "sb.messages",
        partitions: [
          {
            partition: 7,
            firstSequence: 1_234,
            messages: [
              { key: "d:alice:bob", value: body(180), headers: { "reply-partition": "3" } },
              {
                key: "g:team",
                value: body(40),
                headers: { "reply-partition": "3", traceparent: "00-ab-cd-01" },
              },
            ],
          },
          { partition: 0, firstSequence: 0, messages: [{ key: "d:x:y", value: body(1) }] },
        ],
      },
      {
        topic: "sb.replies-by-process",
        partitions: [{ partition: 2, firstSequence: 99, messages: [{ key: null, value: body(300) }] }],
      },
    ],
  },
  "defaults (no producer id, epoch or sequence)": {
    acks: 1,
    timeout: 5_000,
    topicData: [{ topic: "t", partitions: [{ partition: 0, messages: [{ value: "v" }] }] }],
  },
  "a transactional id (sets the batch's transactional bit)": {
    acks: -1,
    timeout: 30_000,
    transactionalId: "tx-ü",
    producerId: 77,
    producerEpoch: 1,
    topicData: [{ topic: "t", partitions: [{ partition: 1, messages: [{ key: "k", value: "v" }] }] }],
  },
  "string and Buffer keys and values, empty and multi-byte UTF-8, null and missing": oneTopic("tøpic-ß", [
    {
      partition: 3,
      messages: [
        { key: "", value: "" },
        { key: Buffer.alloc(0), value: Buffer.alloc(0) },
        { key: "ключ", value: "значение 🚀" },
        { key: null, value: null },
        { value: body(2_000) },
        { key: body(130), value: "x".repeat(200) },
      ],
    },
  ]),
  "header arrays, Buffer header values, many headers": oneTopic("t", [
    {
      partition: 0,
      messages: [
        {
          key: "k",
          value: "v",
          headers: {
            many: ["a", Buffer.from([1, 2, 3]), ""],
            bin: body(200),
            ...Object.fromEntries(Array.from({ length: 70 }, (_, i) => [`h${i}`, `v${i}`])),
          },
        },
        { key: "k2", value: "v2", headers: {} },
      ],
    },
  ]),
  "timestamps: given, out of order, of different lengths, zero, mixed with absent ones": oneTopic("t", [
    {
      partition: 0,
      messages: [
        { value: "a", timestamp: 1_764_000_000_500 },
        { value: "b", timestamp: 1_764_000_000_100 },
        { value: "c" },
        { value: "d", timestamp: 0 },
        { value: "e", timestamp: 1_764_000_009_999 },
      ],
    },
    {
      partition: 1,
      messages: [
        { value: "f", timestamp: 999 },
        { value: "g", timestamp: 1_000 },
      ],
    },
  ]),
  "a partition of many records (multi-byte varints for sizes and offsets)": oneTopic("t", [
    {
      partition: 5,
      firstSequence: 2 ** 31 - 10,
      messages: Array.from({ length: 300 }, (_, i) => ({ key: `k${i}`, value: body(i) })),
    },
  ]),
};

describe("kafkajs's Produce encoding, done in one buffer", () => {
  for (const [name, args] of Object.entries(CASES)) {
    it(`writes kafkajs's bytes: ${name}`, async () => {
      // kafkajs reads the clock inside encode(); both read the same one here.
      vi.spyOn(Date, "now").mockReturnValue(1_764_000_000_000);
      expect(encodesExactly(args)).toBe(true);
      const ours = encodeProduce(args);
      expect(ours).toBeDefined();
      expect(ours!.equals(await kafkajsBytes(args))).toBe(true);
    });
  }

  it("leaves to kafkajs what it does not encode the same way", () => {
    const one = (message: Record<string, unknown>, extra: Partial<ProduceArgs> = {}): ProduceArgs => ({
      acks: -1,
      timeout: 30_000,
      topicData: [{ topic: "t", partitions: [{ partition: 0, messages: [message] }] }],
      ...extra,
    });
    expect(encodesExactly(one({ value: "v" }, { compression: 1 }))).toBe(false); // gzip
    expect(encodesExactly(one({ value: "v", timestamp: "1764000000000" }))).toBe(false);
    expect(encodesExactly(one({ value: "v", timestamp: 1.5 }))).toBe(false);
    expect(encodesExactly(one({ value: 42 }))).toBe(false);
    expect(encodesExactly(one({ key: {}, value: "v" }))).toBe(false);
    expect(encodesExactly(one({ value: "v", headers: { h: null } }))).toBe(false);
    expect(encodesExactly(one({ value: "v", headers: { h: [1] } }))).toBe(false);
    expect(encodesExactly(one({ value: "v", headers: null }))).toBe(false);
    expect(encodesExactly(one({ value: "v" }, { acks: undefined }))).toBe(false);
    expect(encodesExactly(one({ value: "v" }))).toBe(true);
  });

  it("is what kafkajs's Produce v7 request encodes once the fix is applied", async () => {
    vi.spyOn(Date, "now").mockReturnValue(1_764_000_000_000);
    const produce = require("kafkajs/src/protocol/requests/produce/index.js") as {
      protocol: (o: { version: number }) => (a: ProduceArgs) => {
        request: { apiVersion: number; encode(): Promise<{ buffer: Buffer; buf: Buffer }> };
      };
    };
    fixKafkajsProduceEncoding();
    fixKafkajsProduceEncoding(); // idempotent: wrapped once
    const args = CASES["the platform's drafts and replies (idempotent producer, headers, no timestamps)"]!;
    const { request } = produce.protocol({ version: 7 })(args);
    expect(request.apiVersion).toBe(7);
    const encoded = await request.encode();
    expect(encoded.buffer.equals(encodeProduce(args)!)).toBe(true);
    // Ours, not kafkajs's: one buffer of the request's exact size (kafkajs's grow by powers of two).
    expect(encoded.buf.length).toBe(encoded.buffer.length);
    expect(encoded.buffer.equals(await kafkajsBytes(args))).toBe(true);
    // A request it does not take still encodes, through kafkajs.
    const gzipLike = {
      ...args,
      topicData: [{ topic: "t", partitions: [{ partition: 0, messages: [{ value: "v", timestamp: "5" }] }] }],
    };
    expect(
      (await produce.protocol({ version: 7 })(gzipLike).request.encode()).buffer.equals(
        await kafkajsBytes(gzipLike),
      ),
    ).toBe(true);
  });
});
