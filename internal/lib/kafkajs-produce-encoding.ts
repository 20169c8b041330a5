/**
 * A faster encoding of kafkajs's Produce requests, applied once per process before any producer
 * sends.
 *
 * kafkajs 2.2.4 (its last release) builds a Produce request out of one `Encoder` per record, per
 * header, per record batch, per partition and per topic, each starting as a zero-filled 512-byte
 * buffer that grows by copying, plus one small Buffer per varint, and copies every level into the
 * next. Measured on this project's records (2 topics, 3 partitions, 9 records of ~180 bytes with two
 * headers): 240–285 µs of CPU per request, most of it constructing Buffers, and a tenth of a
 * distributed process's busy time at 1,000 messages/s (bench/README.md, "kafkajs's produce
 * encoding").
 *
 * This writes the same bytes in two passes: sizes first, then one `Buffer.allocUnsafe` of the
 * request's exact size filled front to back (every byte of it is written: nothing uninitialised goes
 * out), with the record batch's CRC-32C computed over its region once written. It replaces only the
 * `encode` of Produce versions 3-7 (record batch format v2, the versions a Kafka broker of 0.11 or
 * later negotiates), and only for what it encodes exactly as kafkajs does: no compression, keys and
 * values that are strings, Buffers or null, header values that are strings or Buffers (or arrays of
 * them), timestamps that are absent or integers. Anything else takes kafkajs's own path. The bytes are
 * compared with kafkajs's own over many shapes in kafkajs-produce-encoding.test.ts, and every test
 * on the distributed backend sends through it to a real broker, which checks the CRC and the format.
 */
import { createRequire } from "node:module";
import { invariantViolated } from "./errors.js";

interface KafkajsLong {
  getHighBits(): number;
  getLowBits(): number;
}

interface ProduceMessage {
  key?: unknown;
  value?: unknown;
  headers?: unknown;
  timestamp?: unknown;
}

interface PartitionData {
  partition: number;
  firstSequence?: number;
  messages: ProduceMessage[];
}

interface TopicData {
  topic: string;
  partitions: PartitionData[];
}

/** What kafkajs's broker passes to a Produce version's request builder. */
export interface ProduceArgs {
  acks?: number | undefined;
  timeout?: number | undefined;
  compression?: number | undefined;
  topicData: TopicData[];
  transactionalId?: string | null | undefined;
  producerId?: unknown;
  producerEpoch?: number | undefined;
}

/** The subset of kafkajs's Encoder that its request framing reads from an encoded payload. */
interface EncodedPayload {
  buf: Buffer;
  offset: number;
}

type Built = { request: { encode: () => Promise<unknown> } };
type VersionBuilder = (args: ProduceArgs) => Built;

const require = createRequire(import.meta.url);

/** kafkajs's Long, CRC-32C and Encoder (internal modules: no public export). */
function kafkajsInternals() {
  return {
    Long: require("kafkajs/src/utils/long.js") as {
      fromValue(v: unknown): KafkajsLong;
      fromInt(v: number): KafkajsLong;
    },
    crc32C: require("kafkajs/src/protocol/recordBatch/crc32C/index.js") as (b: Buffer) => number,
    Encoder: require("kafkajs/src/protocol/encoder.js") as new (size?: number) => EncodedPayload,
  };
}

let internals: ReturnType<typeof kafkajsInternals> | undefined;
const lib = () => (internals ??= kafkajsInternals());

const TRANSACTIONAL_ATTRIBUTE = 16;
const MAGIC_BYTE = 2;
/** A timestamp delta at most this large (in either direction) is a varlong written without Long. */
const SAFE_DELTA_MAX = 2 ** 51;
/** Versions whose request is the v3 encoder's (v4-v7 wrap it, changing only the version number). */
const RECORD_BATCH_VERSIONS = new Set([3, 4, 5, 6, 7]);

const isBytes = (v: unknown): v is string | Buffer => typeof v === "string" || Buffer.isBuffer(v);
const isBytesOrNull = (v: unknown) => v == null || isBytes(v);
const byteLength = (v: string | Buffer) => (typeof v === "string" ? Buffer.byteLength(v, "utf8") : v.length);

function isPlainHeaders(headers: unknown): boolean {
  if (headers === undefined) return true;
  if (headers === null || typeof headers !== "object") return false;
  for (const value of Object.values(headers)) {
    if (Array.isArray(value) ? !value.every(isBytes) : !isBytes(value)) return false;
  }
  return true;
}

/** Whether `args` is what this encodes byte for byte as kafkajs does (see the file's comment). */
export function encodesExactly(args: ProduceArgs): boolean {
  if ((args.compression ?? 0) !== 0) return false;
  // kafkajs's broker always passes both; its request has no defaults for them.
  if (!Number.isInteger(args.acks) || !Number.isInteger(args.timeout)) return false;
  if (args.transactionalId != null && typeof args.transactionalId !== "string") return false;
  for (const t of args.topicData) {
    if (typeof t.topic !== "string") return false;
    for (const p of t.partitions) {
      for (const m of p.messages) {
        if (!isBytesOrNull(m.key) || !isBytesOrNull(m.value) || !isPlainHeaders(m.headers)) return false;
        if (m.timestamp != null && !Number.isSafeInteger(m.timestamp)) return false;
      }
    }
  }
  return true;
}

// ---- varints (Kafka's zigzag LEB128, with kafkajs's 32-bit arithmetic for varint) ----------------

function sizeOfVarInt(value: number): number {
  let v = (value << 1) ^ (value >> 31);
  let bytes = 1;
  while ((v & 0xffffff80) !== 0) {
    bytes++;
    v >>>= 7;
  }
  return bytes;
}

function writeVarInt(out: Buffer, o: number, value: number): number {
  let v = (value << 1) ^ (value >> 31);
  while ((v & 0xffffff80) !== 0) {
    out[o++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  out[o++] = v & 0x7f;
  return o;
}

/** Zigzag of a safe integer of magnitude at most SAFE_DELTA_MAX, as a (safe) non-negative number. */
const zigzag64 = (value: number) => (value >= 0 ? value * 2 : -value * 2 - 1);

function sizeOfVarLong(value: number): number {
  let v = zigzag64(value);
  let bytes = 1;
  while (v >= 0x80) {
    bytes++;
    v = Math.floor(v / 0x80);
  }
  return bytes;
}

function writeVarLong(out: Buffer, o: number, value: number): number {
  let v = zigzag64(value);
  while (v >= 0x80) {
    out[o++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  out[o++] = v;
  return o;
}

const sizeOfVarIntBytes = (v: unknown) =>
  v == null
    ? sizeOfVarInt(-1)
    : sizeOfVarInt(byteLength(v as string | Buffer)) + byteLength(v as string | Buffer);

function writeVarIntBytes(out: Buffer, o: number, v: unknown): number {
  if (v == null) return writeVarInt(out, o, -1);
  if (typeof v === "string") {
    const n = Buffer.byteLength(v, "utf8");
    o = writeVarInt(out, o, n);
    return o + out.write(v, o, n, "utf8");
  }
  const b = v as Buffer;
  o = writeVarInt(out, o, b.length);
  return o + b.copy(out, o);
}

// ---- records and batches --------------------------------------------------------------------------

interface Header {
  key: string;
  value: string | Buffer;
}

/** A message's headers as kafkajs flattens them (an array value: one header per element). */
function headersOf(headers: unknown): Header[] {
  if (headers === undefined) return [];
  const out: Header[] = [];
  for (const [key, value] of Object.entries(
    headers as Record<string, string | Buffer | Array<string | Buffer>>,
  )) {
    if (Array.isArray(value)) for (const v of value) out.push({ key, value: v });
    else out.push({ key, value });
  }
  return out;
}

/** One partition's record batch, measured: what the writing pass needs. */
interface PlannedBatch {
  partition: PartitionData;
  firstTimestamp: number;
  maxTimestamp: number;
  dateNow: number;
  headers: Header[][];
  bodySizes: number[];
  /** Bytes from the batch's base offset to its last record. */
  size: number;
}

const BATCH_BODY_FIXED = 2 + 4 + 8 + 8 + 8 + 2 + 4 + 4; // attributes .. first sequence, record count
const BATCH_FIXED = 8 + 4 + 4 + 1 + 4; // base offset, length, leader epoch, magic, CRC

function planBatch(partition: PartitionData): PlannedBatch | undefined {
  const dateNow = Date.now();
  // kafkajs's own choice, kept for the same bytes: the default (string) sort of the timestamps given.
  const given = partition.messages
    .map((m) => m.timestamp)
    .filter((t) => t != null)
    .sort();
  const timestamps = given.length === 0 ? [dateNow] : (given as number[]);
  const firstTimestamp = timestamps[0]!;
  const maxTimestamp = timestamps[timestamps.length - 1]!;
  const headers: Header[][] = [];
  const bodySizes: number[] = [];
  let size = BATCH_FIXED + BATCH_BODY_FIXED;
  let deltasSafe = true;
  partition.messages.forEach((m, i) => {
    const delta = ((m.timestamp as number) || dateNow) - firstTimestamp;
    if (Math.abs(delta) > SAFE_DELTA_MAX) deltasSafe = false;
    const hs = headersOf(m.headers);
    let body =
      1 + sizeOfVarLong(delta) + sizeOfVarInt(i) + sizeOfVarIntBytes(m.key) + sizeOfVarIntBytes(m.value);
    body += sizeOfVarInt(hs.length);
    for (const h of hs) body += sizeOfVarIntBytes(h.key) + sizeOfVarIntBytes(h.value);
    headers.push(hs);
    bodySizes.push(body);
    size += sizeOfVarInt(body) + body;
  });
  if (!deltasSafe) return undefined;
  return { partition, firstTimestamp, maxTimestamp, dateNow, headers, bodySizes, size };
}

function writeBatch(
  out: Buffer,
  o: number,
  plan: PlannedBatch,
  args: ProduceArgs,
  producerId: KafkajsLong,
): number {
  const { partition, headers, bodySizes } = plan;
  const messages = partition.messages;
  // Base offset 0, then the batch length: what follows it.
  out.writeInt32BE(0, o);
  out.writeInt32BE(0, o + 4);
  out.writeInt32BE(plan.size - 12, o + 8);
  out.writeInt32BE(0, o + 12); // partition leader epoch
  out[o + 16] = MAGIC_BYTE;
  const crcAt = o + 17;
  const bodyStart = o + 21;
  o = bodyStart;
  out.writeInt16BE(args.transactionalId ? TRANSACTIONAL_ATTRIBUTE : 0, o);
  out.writeInt32BE(messages.length - 1, o + 2);
  out.writeBigInt64BE(BigInt(plan.firstTimestamp), o + 6);
  out.writeBigInt64BE(BigInt(plan.maxTimestamp), o + 14);
  out.writeInt32BE(producerId.getHighBits(), o + 22);
  out.writeInt32BE(producerId.getLowBits(), o + 26);
  out.writeInt16BE(args.producerEpoch ?? 0, o + 30);
  out.writeInt32BE(partition.firstSequence ?? 0, o + 32);
  out.writeInt32BE(messages.length, o + 36);
  o += 40;
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i]!;
    o = writeVarInt(out, o, bodySizes[i]!);
    out[o++] = 0; // record attributes
    o = writeVarLong(out, o, ((m.timestamp as number) || plan.dateNow) - plan.firstTimestamp);
    o = writeVarInt(out, o, i);
    o = writeVarIntBytes(out, o, m.key);
    o = writeVarIntBytes(out, o, m.value);
    const hs = headers[i]!;
    o = writeVarInt(out, o, hs.length);
    for (const h of hs) {
      o = writeVarIntBytes(out, o, h.key);
      o = writeVarIntBytes(out, o, h.value);
    }
  }
  out.writeUInt32BE(lib().crc32C(out.subarray(bodyStart, o)), crcAt);
  return o;
}

/** The Produce request body (what follows the request header) kafkajs would encode for `args`. */
export function encodeProduce(args: ProduceArgs): Buffer | undefined {
  const { Long } = lib();
  const producerId = args.producerId === undefined ? Long.fromInt(-1) : Long.fromValue(args.producerId);
  const transactionalId = args.transactionalId ?? null;
  let size = (transactionalId === null ? 2 : 2 + Buffer.byteLength(transactionalId, "utf8")) + 2 + 4 + 4;
  const plans: PlannedBatch[][] = [];
  for (const t of args.topicData) {
    size += 2 + Buffer.byteLength(t.topic, "utf8") + 4;
    const topicPlans: PlannedBatch[] = [];
    for (const p of t.partitions) {
      const plan = planBatch(p);
      if (!plan) return undefined;
      topicPlans.push(plan);
      size += 4 + 4 + plan.size;
    }
    plans.push(topicPlans);
  }
  const out = Buffer.allocUnsafe(size);
  let o = 0;
  if (transactionalId === null) o = out.writeInt16BE(-1, o);
  else {
    o = out.writeInt16BE(Buffer.byteLength(transactionalId, "utf8"), o);
    o += out.write(transactionalId, o, "utf8");
  }
  o = out.writeInt16BE(args.acks!, o);
  o = out.writeInt32BE(args.timeout!, o);
  o = out.writeInt32BE(args.topicData.length, o);
  args.topicData.forEach((t, ti) => {
    o = out.writeInt16BE(Buffer.byteLength(t.topic, "utf8"), o);
    o += out.write(t.topic, o, "utf8");
    o = out.writeInt32BE(t.partitions.length, o);
    for (const plan of plans[ti]!) {
      o = out.writeInt32BE(plan.partition.partition, o);
      o = out.writeInt32BE(plan.size, o);
      o = writeBatch(out, o, plan, args, producerId);
    }
  });
  if (o !== size) throw invariantViolated(`produce request of ${o} bytes, planned ${size}`);
  return out;
}

/** `bytes` as the Encoder kafkajs's request framing expects from `encode()`. */
function asEncoder(bytes: Buffer): EncodedPayload {
  const e = new (lib().Encoder)(0);
  e.buf = bytes;
  e.offset = bytes.length;
  return e;
}

let applied = false;

/** Routes kafkajs's Produce v3-v7 encoding through `encodeProduce` (idempotent). */
export function fixKafkajsProduceEncoding(): void {
  if (applied) return;
  applied = true;
  const produce = require("kafkajs/src/protocol/requests/produce/index.js") as {
    protocol: (o: { version: number }) => VersionBuilder;
  };
  const original = produce.protocol;
  produce.protocol = ({ version }) => {
    const build = original({ version });
    if (!RECORD_BATCH_VERSIONS.has(version)) return build;
    return (args) => {
      const built = build(args);
      if (!encodesExactly(args)) return built;
      const fallback = built.request.encode;
      built.request.encode = async () => {
        const bytes = encodeProduce(args);
        return bytes === undefined ? fallback() : asEncoder(bytes);
      };
      return built;
    };
  };
}
