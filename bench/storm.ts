/**
 * Reconnect storm and history sync (docs/design.md G7 and G8; issue 12), on a fresh embedded server:
 *
 *   - Storm: N users in groups of `groupSize` miss 20–50 messages each (every group gets its own
 *     random count, posted by the group's owner, whose live connection sees each message come back
 *     once the members' inbox entries are written), then all N connect at once (at most
 *     `concurrency` opening at a time) and sync from cursor 0 until the server says they are live.
 *     Per client: the time from the storm's start to live, its messages, and any missing or
 *     duplicate (by conversation and seq); the server's CPU over the storm.
 *   - History: one conversation of `historyMessages` messages read back from the newest in pages of
 *     the server's maximum (1,000), by a fresh connection, twice (cold after the writes, then warm).
 */
import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import type WebSocket from "ws";
import { ClientFrameSchema } from "../gen/switchboard/client/v1/client_pb.js";
import { mintTokens, openClient, pool, syncToLive } from "./client.js";
import { type LatencySummary, newHistogram, recordMs, summarize } from "./hist.js";
import type { ServerProcess } from "./server.js";
import { decodeFull } from "./wire.js";

export interface StormOptions {
  clients: number;
  groupSize: number;
  missedMin: number;
  missedMax: number;
  concurrency: number;
  historyMessages: number;
  log: (s: string) => void;
}

export interface StormResult {
  clients: number;
  groups: number;
  messages_posted: number;
  messages_missed_total: number;
  /** Storm start → every client live. */
  all_resynced_seconds: number;
  /** Storm start → each client live. */
  resynced: LatencySummary;
  connects_per_second: number;
  lost: number;
  duplicates: number;
  failed_clients: number;
  server_cpu_cores: number;
  /** This generator's CPU over the storm: near 1, the figure is the generator's bound, not the server's. */
  generator_cpu_cores: number;
  history: { messages: number; pages: number; cold_ms: number; warm_ms: number };
}

type Frame = ReturnType<typeof decodeFull>;
type ClientKind = NonNullable<MessageInitShape<typeof ClientFrameSchema>["kind"]>;

const frameOf = (id: number, kind: ClientKind) =>
  Buffer.from(toBinary(ClientFrameSchema, create(ClientFrameSchema, { id, kind })));

/** Sends a request on `ws` and resolves with the server's reply to it. */
function request(ws: WebSocket, id: number, kind: ClientKind): Promise<Frame> {
  return new Promise((resolve) => {
    const onMessage = (data: Buffer) => {
      const frame = decodeFull(data);
      if (frame.replyTo !== id) return;
      ws.off("message", onMessage);
      resolve(frame);
    };
    ws.on("message", onMessage);
    ws.send(frameOf(id, kind));
  });
}

/**
 * Posts `count` messages into `conversationId` from `ws` (a member's live connection) with `window`
 * in flight, and resolves once the last one came back to it as a live message: by then the router
 * has written every member's inbox entry for all of them.
 */
function post(
  ws: WebSocket,
  conversationId: string,
  count: number,
  window: number,
  tag: string,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let sent = 0;
    let acked = 0;
    let echoed = 0;
    const sendNext = () => {
      const i = sent++;
      ws.send(
        frameOf(i + 1, {
          case: "send",
          value: {
            target: { case: "conversationId", value: conversationId },
            clientMsgId: `${tag}-${i}`,
            body: `${tag} ${i}`,
          },
        }),
      );
    };
    const onMessage = (data: Buffer) => {
      const frame = decodeFull(data);
      if (frame.kind === "ack") {
        acked++;
        if (sent < count) sendNext();
      } else if (frame.kind === "message") echoed++;
      else if (frame.kind === "error") {
        ws.off("message", onMessage);
        reject(new Error(`post into ${conversationId} failed: ${JSON.stringify(frame.value)}`));
        return;
      }
      if (acked === count && echoed === count) {
        ws.off("message", onMessage);
        resolve();
      }
    };
    ws.on("message", onMessage);
    for (let i = 0; i < Math.min(window, count); i++) sendNext();
  });
}

/** Syncs from cursor 0 until live; returns the messages' (conversation, seq) keys in arrival order. */
async function syncAll(ws: WebSocket): Promise<string[]> {
  const keys: string[] = [];
  await syncToLive(ws, "binary", (page) => {
    const messages = (page as { messages?: Array<{ message?: { conversationId: string; seq: bigint } }> })
      .messages;
    for (const e of messages ?? []) keys.push(`${e.message?.conversationId}#${e.message?.seq}`);
  });
  return keys;
}

export async function runStorm(server: ServerProcess, o: StormOptions): Promise<StormResult> {
  const url = `ws://127.0.0.1:${server.port}/ws`;
  const groups = Math.ceil(o.clients / o.groupSize);
  const users = Array.from({ length: o.clients }, (_, i) => `storm${i}`);
  const owners = Array.from({ length: groups }, (_, g) => `storm-owner${g}`);
  const [userTokens, ownerTokens] = await Promise.all([
    mintTokens(server.dataDir, users),
    mintTokens(server.dataDir, owners),
  ]);

  // The groups, and what each member will miss.
  const ownerConns = await pool(owners, 50, async (_u, g) => {
    const ws = await openClient({ url, token: ownerTokens[g]!, encoding: "binary" });
    await syncAll(ws);
    return ws;
  });
  const missed = Array.from(
    { length: groups },
    () => o.missedMin + Math.floor(Math.random() * (o.missedMax - o.missedMin + 1)),
  );
  const groupIds = await pool(ownerConns, 50, async (ws, g) => {
    const reply = await request(ws, 1_000_000, {
      case: "createGroup",
      value: { name: `storm ${g}`, members: users.slice(g * o.groupSize, (g + 1) * o.groupSize) },
    });
    const id = (reply.value as { conversation?: { id?: string } } | undefined)?.conversation?.id;
    if (reply.kind !== "conversation" || !id)
      throw new Error(`createGroup failed: ${JSON.stringify(reply.value)}`);
    return id;
  });
  const postStart = performance.now();
  await pool(ownerConns, 50, (ws, g) => post(ws, groupIds[g]!, missed[g]!, 16, `g${g}`));
  const posted = missed.reduce((a, b) => a + b, 0);
  o.log(
    `  ${groups} groups of ${o.groupSize}: ${posted} messages posted and in every member's inbox in ${((performance.now() - postStart) / 1000).toFixed(1)} s`,
  );

  // The storm.
  const expected = users.map((_u, i) => missed[Math.floor(i / o.groupSize)]!);
  const hist = newHistogram();
  let lost = 0;
  let duplicates = 0;
  let failed = 0;
  const open: WebSocket[] = [];
  const cpu0 = server.cpuSeconds();
  const generator0 = process.cpuUsage();
  const start = performance.now();
  let lastLive = start;
  await pool(users, o.concurrency, async (_u, i) => {
    try {
      const ws = await openClient({
        url,
        token: userTokens[i]!,
        encoding: "binary",
        localAddress: `127.0.0.${1 + Math.floor(i / 5000)}`,
      });
      open.push(ws);
      const keys = await syncAll(ws);
      const now = performance.now();
      lastLive = Math.max(lastLive, now);
      recordMs(hist, now - start);
      const unique = new Set(keys).size;
      duplicates += keys.length - unique;
      lost += Math.max(0, expected[i]! - unique);
    } catch {
      failed++;
      lost += expected[i]!;
    }
  });
  const stormSeconds = (lastLive - start) / 1000;
  const serverCores = (server.cpuSeconds() - cpu0) / stormSeconds;
  const generatorUsed = process.cpuUsage(generator0);
  const generatorCores = (generatorUsed.user + generatorUsed.system) / 1e6 / stormSeconds;
  o.log(
    `  storm: ${o.clients - failed} clients live in ${stormSeconds.toFixed(2)} s, ${lost} lost, ${duplicates} duplicates`,
  );
  for (const ws of [...open, ...ownerConns]) ws.terminate();

  return {
    clients: o.clients,
    groups,
    messages_posted: posted,
    messages_missed_total: expected.reduce((a, b) => a + b, 0),
    all_resynced_seconds: Math.round(stormSeconds * 100) / 100,
    resynced: summarize(hist),
    connects_per_second: Math.round((o.clients - failed) / stormSeconds),
    lost,
    duplicates,
    failed_clients: failed,
    server_cpu_cores: Math.round(serverCores * 100) / 100,
    generator_cpu_cores: Math.round(generatorCores * 100) / 100,
    history: await historySync(server, url, o),
  };
}

export function stormReport(r: StormResult): string {
  const f = (x: number) => x.toFixed(2);
  return [
    `Reconnect storm (design.md G7: all live within 10 s, 0 lost, 0 duplicates) and history sync (G8: 10,000 messages ≤ 300 ms):`,
    `  ${r.clients} clients in ${r.groups} groups, each missed 20–50 messages (${r.messages_missed_total} in all); all connected at once (1,000 opening at a time)`,
    `  all live after ${f(r.all_resynced_seconds)} s (p50 ${f(r.resynced.p50_ms / 1000)} s, p99 ${f(r.resynced.p99_ms / 1000)} s); ${r.connects_per_second} clients/s; lost ${r.lost}, duplicates ${r.duplicates}, failed ${r.failed_clients}; server ${f(r.server_cpu_cores)} cores, generator ${f(r.generator_cpu_cores)}${r.generator_cpu_cores > 0.9 ? " (GENERATOR-BOUND: the figure is this generator's limit)" : ""}`,
    `  history: ${r.history.messages} messages of one conversation in ${r.history.pages} pages: ${r.history.cold_ms} ms after the writes, ${r.history.warm_ms} ms warm`,
  ].join("\n");
}

/** G8: one conversation of `historyMessages` messages, read back newest first in the largest pages. */
async function historySync(
  server: ServerProcess,
  url: string,
  o: StormOptions,
): Promise<StormResult["history"]> {
  const [writerToken, readerToken] = await mintTokens(server.dataDir, ["history-writer", "history-reader"]);
  const writer = await openClient({ url, token: writerToken!, encoding: "binary" });
  await syncAll(writer);
  const created = await request(writer, 1_000_000, {
    case: "createGroup",
    value: { name: "history", members: ["history-reader"] },
  });
  const id = (created.value as { conversation?: { id?: string } } | undefined)?.conversation?.id;
  if (!id) throw new Error(`createGroup failed: ${JSON.stringify(created.value)}`);
  await post(writer, id, o.historyMessages, 64, "h");
  writer.terminate();
  const read = async () => {
    const reader = await openClient({ url, token: readerToken!, encoding: "binary" });
    const started = performance.now();
    let before = 0n;
    let got = 0;
    let pages = 0;
    for (let requestId = 1; ; requestId++) {
      const reply = await request(reader, requestId, {
        case: "history",
        value: { conversationId: id, beforeSeq: before, limit: 1_000 },
      });
      const page = reply.value as { messages?: Array<{ seq: bigint }>; hasMore?: boolean } | undefined;
      if (reply.kind !== "history" || !page)
        throw new Error(`history failed: ${JSON.stringify(reply.value)}`);
      pages++;
      got += page.messages?.length ?? 0;
      if (!page.hasMore || !page.messages?.length) break;
      before = page.messages[0]!.seq;
    }
    const ms = performance.now() - started;
    reader.terminate();
    if (got !== o.historyMessages) throw new Error(`history read ${got} of ${o.historyMessages} messages`);
    return { ms: Math.round(ms * 10) / 10, pages };
  };
  const cold = await read();
  const warm = await read();
  o.log(
    `  history: ${o.historyMessages} messages in ${cold.pages} pages, ${cold.ms} ms cold, ${warm.ms} ms warm`,
  );
  return { messages: o.historyMessages, pages: cold.pages, cold_ms: cold.ms, warm_ms: warm.ms };
}
