/**
 * Acks across processes (distributed backend): a platform that runs no sequencer of its own sends
 * drafts that a separate `switchboard sequencer` process sequences; the answers come back over the
 * replies-by-process topic, in the one partition the platform reads. Every send is acknowledged once, in order, with its seq; a resend of an acknowledged
 * message gets the original back (duplicate) across the process boundary too.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { type Admin, Kafka, logLevel } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { cliPath, devToken, type ServerProcess, startServer } from "../helpers/server.js";
import { ensureServer } from "../infra/servers.js";

let env: Record<string, string>;
let prefix: string;
let admin: Admin;
let platform: ServerProcess;
let sequencer: ChildProcess;
let sequencerLog = "";

beforeAll(async () => {
  const id = `${Date.now().toString(36)}${process.pid.toString(36)}`;
  prefix = `mp-${id}.`;
  env = {
    ...(await ensureServer("kafka")),
    ...(await ensureServer("cassandra")),
    SWITCHBOARD_KAFKA_TOPIC_PREFIX: prefix,
    SWITCHBOARD_KAFKA_PARTITIONS: "3",
    SWITCHBOARD_CASSANDRA_KEYSPACE: `mp_${id}`,
    SWITCHBOARD_LOG_LEVEL: "warn",
  };
  admin = new Kafka({
    clientId: "mp-test",
    brokers: env.KAFKA_BROKERS!.split(","),
    logLevel: logLevel.NOTHING,
  }).admin();
  await admin.connect();
  // The platform first: it creates the topics and the keyspace; it sequences nothing itself.
  platform = await startServer({
    args: ["--backend", "distributed"],
    env: { ...env, SWITCHBOARD_KAFKA_SEQUENCER: "false" },
  });
  sequencer = spawn(process.execPath, [cliPath, "sequencer"], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  sequencer.stderr?.setEncoding("utf8").on("data", (d: string) => {
    sequencerLog = (sequencerLog + d).slice(-20_000);
  });
  let out = "";
  sequencer.stdout?.setEncoding("utf8").on("data", (d: string) => (out += d));
  const deadline = Date.now() + 60_000;
  while (!out.includes('"started"')) {
    if (sequencer.exitCode !== null || Date.now() > deadline)
      throw new Error(`sequencer did not start:\n${sequencerLog}`);
    await new Promise((r) => setTimeout(r, 100));
  }
});

afterAll(async () => {
  await admin?.disconnect();
  if (sequencer && sequencer.exitCode === null) {
    const exited = once(sequencer, "exit");
    sequencer.kill("SIGTERM");
    await exited;
  }
  await platform?.dispose();
});

describe("acks across processes", () => {
  it("acknowledges every send sequenced by another process, in order, and answers resends with the original", async () => {
    const alice = await RawClient.connect(platform.url, {
      token: await devToken(platform.dataDir, "mp-alice"),
    });
    const bob = await RawClient.connect(platform.url, { token: await devToken(platform.dataDir, "mp-bob") });
    try {
      const sends = Array.from({ length: 30 }, (_, i) =>
        alice.request(
          {
            case: "send",
            value: { target: { case: "toUser", value: "mp-bob" }, clientMsgId: `m${i}`, body: `hello ${i}` },
          },
          30_000,
        ),
      );
      const acks = (await Promise.all(sends)).map((f) => expectCase(f, "ack"));
      expect(acks.map((a) => a.seq)).toEqual(Array.from({ length: 30 }, (_, i) => BigInt(i + 1)));
      expect(new Set(acks.map((a) => a.messageId)).size).toBe(30);
      expect(acks.every((a) => !a.duplicate)).toBe(true);

      const again = expectCase(
        await alice.request(
          {
            case: "send",
            value: { target: { case: "toUser", value: "mp-bob" }, clientMsgId: "m7", body: "hello 7" },
          },
          30_000,
        ),
        "ack",
      );
      expect(again).toMatchObject({ duplicate: true, seq: 8n, messageId: acks[7]?.messageId });

      // And the messages reach the recipient's inbox (after the ack: the inbox owner follows the
      // log), once each, in order.
      const { messages } = await bob.syncAtLeast(30);
      expect(messages.map((m) => m.body)).toEqual(Array.from({ length: 30 }, (_, i) => `hello ${i}`));

      // The 31 answers went to the one partition of replies-by-process the platform reads, none to
      // `replies` (answered by conversation key, which every process would read).
      const written = async (topic: string) =>
        (await admin.fetchTopicOffsets(topic)).filter((p) => Number(p.high) > 0).map((p) => Number(p.high));
      expect(await written(`${prefix}replies`)).toEqual([]);
      expect(await written(`${prefix}replies-by-process`)).toEqual([31]);
    } catch (err) {
      console.error(
        `--- platform stderr ---\n${platform.stderr()}\n--- sequencer stderr ---\n${sequencerLog}`,
      );
      throw err;
    } finally {
      alice.ws.close();
      bob.ws.close();
    }
  });
});
