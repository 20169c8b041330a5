/**
 * With `--backend distributed`, an acknowledged message is in Kafka's `switchboard.messages` topic
 * and in Cassandra's `switchboard.messages_by_conversation` table (default names), with its seq.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import cassandra from "cassandra-driver";
import { Kafka, logLevel } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SCHEMA_VERSION } from "../../internal/backends/cassandra/schema.js";
import { decodeMessage } from "../../internal/backends/kafka/codec.js";
import { decodeSnowflake } from "../../internal/id/index.js";
import { Code } from "../../internal/lib/errors.js";
import { defaultMemberFile } from "../../internal/process/backends.js";
import { freePort } from "../helpers/grpc.js";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { cliPath, devToken, refusedStart, type ServerProcess, startServer } from "../helpers/server.js";
import { TcpProxy } from "../helpers/tcp-proxy.js";
import { ensureServer } from "../infra/servers.js";

let server: ServerProcess;
let infra: Record<string, string>;

beforeAll(async () => {
  infra = { ...(await ensureServer("kafka")), ...(await ensureServer("cassandra")) };
  // Default topic prefix and keyspace: exactly what an operator would see.
  server = await startServer({
    args: ["--backend", "distributed"],
    env: { ...infra, SWITCHBOARD_KAFKA_PARTITIONS: "3" },
  });
});
afterAll(async () => {
  await server?.dispose();
});

/** Connects as `from`, sends `body` to `to`, and returns the ack (the connection closed after). */
async function sendOnce(from: string, to: string, clientMsgId: string, body: string) {
  const c = await RawClient.connect(server.url, { token: await devToken(server.dataDir, from) });
  const ack = expectCase(
    await c.request({ case: "send", value: { target: { case: "toUser", value: to }, clientMsgId, body } }),
    "ack",
  );
  c.close();
  return ack;
}

describe("distributed storage", () => {
  it("puts an acked message in switchboard.messages and in messages_by_conversation", async () => {
    const alice = await RawClient.connect(server.url, {
      token: await devToken(server.dataDir, "store-alice"),
    });
    const clientMsgId = `store-${Date.now()}`;
    const ack = expectCase(
      await alice.request({
        case: "send",
        value: { target: { case: "toUser", value: "store-bob" }, clientMsgId, body: "where am I?" },
      }),
      "ack",
    );
    alice.close();

    const client = new cassandra.Client({
      contactPoints: infra.CASSANDRA_CONTACT_POINTS!.split(","),
      localDataCenter: infra.CASSANDRA_DATACENTER ?? "datacenter1",
    });
    try {
      const rows = await client.execute(
        "SELECT seq, message_id, sender, body, client_msg_id FROM switchboard.messages_by_conversation WHERE conversation_id = ? AND bucket = ? AND seq = ?",
        [
          ack.conversationId,
          Math.floor((Number(ack.seq) - 1) / 1000),
          cassandra.types.Long.fromString(String(ack.seq)),
        ],
        { prepare: true },
      );
      expect(rows.rows).toHaveLength(1);
      expect(rows.rows[0]!.get("body")).toBe("where am I?");
      expect(rows.rows[0]!.get("client_msg_id")).toBe(clientMsgId);
    } finally {
      await client.shutdown();
    }

    const kafka = new Kafka({
      clientId: "storage-test",
      brokers: infra.KAFKA_BROKERS!.split(","),
      logLevel: logLevel.NOTHING,
    });
    const consumer = kafka.consumer({ groupId: `storage-test-${Date.now()}` });
    await consumer.connect();
    await consumer.subscribe({ topic: "switchboard.messages", fromBeginning: true });
    const found = await new Promise<ReturnType<typeof decodeMessage>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("message not found in switchboard.messages")), 30_000);
      void consumer.run({
        eachMessage: async ({ message }) => {
          const m = decodeMessage(message.value!);
          if (m.messageId === ack.messageId) {
            clearTimeout(timer);
            resolve(m);
          }
        },
      });
    });
    await consumer.disconnect();
    expect(found).toMatchObject({ conversationId: ack.conversationId, clientMsgId, body: "where am I?" });
  }, 90_000);

  it("keeps the id worker's high-water mark in switchboard.id_high_water, ahead of every id it gave", async () => {
    const ack = await sendOnce("mark-alice", "mark-bob", `mark-${Date.now()}`, "id");
    const client = new cassandra.Client({
      contactPoints: infra.CASSANDRA_CONTACT_POINTS!.split(","),
      localDataCenter: infra.CASSANDRA_DATACENTER ?? "datacenter1",
    });
    try {
      // Worker 0: id.workerId's default. A restart starts above this mark whatever its clock says.
      const row = (
        await client.execute("SELECT until_ms FROM switchboard.id_high_water WHERE worker_id = 0", [], {
          prepare: true,
        })
      ).first();
      expect(Number(row?.get("until_ms"))).toBeGreaterThan(decodeSnowflake(ack.messageId).ms);
    } finally {
      await client.shutdown();
    }
  }, 60_000);

  it("ends a closed session's records in switchboard.routing with a tombstone, for compaction to remove", async () => {
    const client = await RawClient.connect(server.url, {
      token: await devToken(server.dataDir, "routing-carol"),
    });
    const welcome = client.received.find((f) => f.kind.case === "welcome");
    const sessionId = expectCase(welcome!, "welcome").sessionId;
    client.close();
    await client.closed;
    const kafka = new Kafka({
      clientId: "routing-test",
      brokers: infra.KAFKA_BROKERS!.split(","),
      logLevel: logLevel.NOTHING,
    });
    const consumer = kafka.consumer({ groupId: `routing-test-${Date.now()}` });
    await consumer.connect();
    await consumer.subscribe({ topic: "switchboard.routing", fromBeginning: true });
    const records: Array<Buffer | null> = [];
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`session ${sessionId}: ${records.length} records, no tombstone`)),
        30_000,
      );
      void consumer.run({
        eachMessage: async ({ message }) => {
          if (message.key?.toString() !== sessionId) return;
          records.push(message.value);
          if (message.value === null) {
            clearTimeout(timer);
            resolve();
          }
        },
      });
    });
    await consumer.disconnect();
    // Up, down (for routers that predate tombstones), then the tombstone.
    expect(records.map((r) => (r === null ? null : "event"))).toEqual(["event", "event", null]);
  }, 60_000);

  it("after kill -9, rejoins the sequencer, inbox and push groups as the members it was, and sequences again", async () => {
    const memberFile = join(server.dataDir, defaultMemberFile("all", server.port));
    const read = () =>
      JSON.parse(readFileSync(memberFile, "utf8")) as { pid: number; members: Record<string, string> };
    const before = read();
    expect(before.pid).toBe(server.child.pid);
    expect(Object.keys(before.members).sort()).toEqual([
      "switchboard.inbox",
      "switchboard.push",
      "switchboard.sequencer",
    ]);

    await server.kill();
    server = await server.restart();
    await sendOnce("store-alice", "store-bob", `again-${Date.now()}`, "back");
    // The coordinator took the old ids: the restarted process did not join as a new member (which
    // would have held every rebalance until the dead member's session expired).
    const after = read();
    expect(after.pid).toBe(server.child.pid);
    expect(after.members).toEqual(before.members);
  }, 90_000);

  it("waits for Cassandra at start, live and not ready, and serves once it answers", async () => {
    // Cassandra's address refuses connections (nothing listens there yet), as a node still starting does.
    const cassandraPort = await freePort();
    const port = await freePort();
    const id = `wait${Date.now().toString(36)}`;
    const starting = startServer({
      port,
      args: ["--backend", "distributed"],
      env: {
        ...infra,
        SWITCHBOARD_CASSANDRA_CONTACT_POINTS: `127.0.0.1:${cassandraPort}`,
        SWITCHBOARD_KAFKA_TOPIC_PREFIX: `${id}.`,
        SWITCHBOARD_CASSANDRA_KEYSPACE: id,
        SWITCHBOARD_KAFKA_PARTITIONS: "3",
      },
    });
    starting.catch(() => undefined); // awaited below; a start that failed is reported there
    const cassandraTarget = Number(infra.CASSANDRA_CONTACT_POINTS!.split(",")[0]!.split(":")[1]);
    let proxy: TcpProxy | undefined;
    try {
      const http = `http://127.0.0.1:${port}`;
      const readyz = () =>
        fetch(`${http}/readyz`).then(
          async (r) => `${r.status} ${await r.text()}`,
          () => "",
        );
      let seen = "";
      // First what it waits for, then, once an attempt failed, why (its first line: no stack).
      for (const deadline = Date.now() + 30_000; !seen.includes("open storage: "); seen = await readyz()) {
        if (Date.now() > deadline) throw new Error(`never said it waits for storage: ${seen}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(seen).toMatch(/^503 .*starting: open storage: connect to 127\.0\.0\.1:\d+/);
      expect(seen).not.toContain("\\n");
      expect((await fetch(`${http}/healthz`)).status).toBe(200);

      // Cassandra comes up: the next attempt opens the storage (backoff of at most a few seconds).
      proxy = await TcpProxy.start(cassandraTarget, cassandraPort);
      const waiting = await starting;
      expect((await fetch(`${http}/readyz`)).status).toBe(200);
      const c = await RawClient.connect(waiting.url, {
        token: await devToken(waiting.dataDir, "late-alice"),
      });
      const ack = expectCase(
        await c.request({
          case: "send",
          value: { target: { case: "toUser", value: "late-bob" }, clientMsgId: "w1", body: "at last" },
        }),
        "ack",
      );
      expect(ack.seq).toBe(1n);
      c.close();
      expect(waiting.stderr()).toContain("open storage failed; retrying");
    } finally {
      // A start still waiting for storage is let through, to be stopped like any other.
      proxy ??= await TcpProxy.start(cassandraTarget, cassandraPort);
      await (await starting.catch(() => undefined))?.dispose();
      await proxy.close();
    }
  }, 90_000);
});

describe("a body larger than the message topics take", () => {
  it("is refused at once with BODY_TOO_LARGE (not a LOG_UNAVAILABLE to retry forever), and holds nothing back", async () => {
    // A deployment that raised bodyCharsMax past what 1 MiB records hold at 4 bytes a character.
    const big = await startServer({
      env: {
        SWITCHBOARD_GATEWAY_BODY_CHARS_MAX: "300000",
        SWITCHBOARD_GATEWAY_FRAME_BYTES_MAX: "3700000",
        SWITCHBOARD_LOG_LEVEL: "info",
      },
    });
    try {
      expect(big.stderr()).toContain("gateway.bodyCharsMax is more than the message topics take");
      const alice = await RawClient.connect(big.url, { token: await devToken(big.dataDir, "big-alice") });
      const send = (clientMsgId: string, body: string) =>
        alice.request({
          case: "send",
          value: { target: { case: "toUser", value: "big-bob" }, clientMsgId, body },
        });
      const refused = expectCase(await send("big-1", "😀".repeat(300_000)), "error"); // 1.2 MB of UTF-8
      expect(refused).toMatchObject({ reason: "BODY_TOO_LARGE", code: Code.INVALID_ARGUMENT });
      expect(refused.message).toMatch(/more than the message log takes/);
      // Not a refusal to retry: the conversation's next send is not held behind it.
      expect(expectCase(await send("big-2", "a shorter one"), "ack").seq).toBe(1n);
      alice.close();
    } finally {
      await big.dispose();
    }
  });
});

describe("distributed storage that does not fit the configuration", () => {
  it("ends role all's start instead of waiting: a partition count other than the topics'", async () => {
    // The topics of the default prefix exist with 3 partitions (the server of beforeAll).
    const r = await refusedStart(["--backend", "distributed"], {
      ...infra,
      SWITCHBOARD_KAFKA_PARTITIONS: "4",
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("has 3 partitions but kafka.partitions is 4");
    expect(r.stderr).not.toContain("retrying");
  });
});

describe("switchboard provision", () => {
  it("creates the topics and brings the keyspace to the schema version, and connects over TLS when told", async () => {
    const tag = Date.now().toString(36);
    const env = {
      ...process.env,
      ...infra,
      SWITCHBOARD_BACKEND: "distributed",
      SWITCHBOARD_KAFKA_TOPIC_PREFIX: `prov_${tag}.`,
      SWITCHBOARD_CASSANDRA_KEYSPACE: `prov_${tag}`,
    };
    const provision = (extra: Record<string, string> = {}) =>
      new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
        execFile(
          process.execPath,
          [cliPath, "provision"],
          { env: { ...env, ...extra } },
          (err, stdout, stderr) =>
            resolve({ code: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr }),
        ),
      );
    const kafka = new Kafka({
      clientId: "provision-test",
      brokers: infra.KAFKA_BROKERS!.split(","),
      logLevel: logLevel.NOTHING,
    });
    const admin = kafka.admin();
    const db = new cassandra.Client({
      contactPoints: infra.CASSANDRA_CONTACT_POINTS!.split(","),
      localDataCenter: infra.CASSANDRA_DATACENTER ?? "datacenter1",
    });
    try {
      const done = await provision();
      expect(done.code, done.stderr).toBe(0);
      const printed = JSON.parse(done.stdout.trim().split("\n").at(-1)!) as Record<string, unknown>;
      expect(printed).toMatchObject({ status: "provisioned", schemaVersion: SCHEMA_VERSION });
      await admin.connect();
      const topics = await admin.listTopics();
      expect(topics.filter((t) => t.startsWith(`prov_${tag}.`)).sort()).toEqual(
        (printed.topics as string[]).slice().sort(),
      );
      // The node takes no TLS: a provision told to use it fails to connect, and never falls back.
      const tls = await provision({ SWITCHBOARD_CASSANDRA_TLS: "true" });
      expect(tls.code).not.toBe(0);
      expect(tls.stderr).toMatch(/connect to .*\(dc /);
    } finally {
      await admin
        .deleteTopics({ topics: (await admin.listTopics()).filter((t) => t.startsWith(`prov_${tag}.`)) })
        .catch(() => undefined);
      await admin.disconnect();
      await db.execute(`DROP KEYSPACE IF EXISTS prov_${tag}`).catch(() => undefined);
      await db.shutdown();
    }
  }, 120_000);
});
