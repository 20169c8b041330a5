/**
 * Bad input at volume: an authenticated client sends thousands of mutated frames (valid requests of
 * every kind with bits flipped, bytes cut, inserted or repeated, fields of the wrong type or out of
 * range, unknown fields, deep nesting, lone surrogates, garbage) over both encodings, reconnecting
 * whenever it is closed, and unauthenticated connections try mutated tokens (a signature changed,
 * alg none, claims swapped or of the wrong type, cut, huge), while alice and bob keep a
 * conversation going on the same server.
 *
 * What must hold (docs/protocol.md): every frame the server writes decodes as a ServerFrame; every
 * error names a reason of §6; every close carries a code of §7; the server stays up and ready; and
 * alice's messages reach bob each once, in order, while it all happens.
 *
 * The mutations come from a seeded generator: a failure prints its seed, and FUZZ_SEED=<seed>
 * sends the same frames again (where the server's closes cut the stream can differ).
 */
import {
  create,
  fromBinary,
  fromJsonString,
  type MessageInitShape,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from "vitest";
import WebSocket from "ws";
import { ClientFrameSchema, ServerFrameSchema } from "../../gen/switchboard/client/v1/client_pb.js";
import { type IncomingMessage, SwitchboardClient } from "../../sdk/src/index.js";
import { documentedCloseCodes, documentedReasons } from "../helpers/protocol-doc.js";
import { devToken, type ServerProcess, startServer } from "../helpers/server.js";

/** Mutated frames per encoding. */
const FRAMES = 2_500;
/** Pause between two of them: below the frame rate limit most of the time, not always. */
const PACE_MS = 3;
/** Unauthenticated connections that each try a few mutated tokens. */
const AUTH_CONNECTIONS = 300;
/** Upgrades with a mutated Authorization header or unknown subprotocols. */
const UPGRADE_ATTEMPTS = 200;
/** alice's messages to bob while the fuzzer runs, one every this many ms. */
const CHAT_INTERVAL_MS = 200;

type Frame = MessageInitShape<typeof ClientFrameSchema>;

/** xorshift32: small, fast, and the same sequence for the same seed everywhere. */
function generator(seed: number) {
  let x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  const int = (n: number) => next() % n;
  return {
    int,
    pick: <T>(items: readonly T[]): T => items[int(items.length)]!,
    chance: (p: number) => next() / 0x1_0000_0000 < p,
    bytes: (n: number) => Buffer.from(Array.from({ length: n }, () => int(256))),
  };
}
type Random = ReturnType<typeof generator>;

/** One valid request of each kind (the ids and names are the fuzzer's own, or its peers'). */
function validFrames(me: string, peer: string, group: string, dm: string): Frame[] {
  const kinds: NonNullable<Frame["kind"]>[] = [
    {
      case: "send",
      value: {
        target: { case: "toUser", value: peer },
        clientMsgId: "c-1",
        body: "hello",
        firstAttempt: true,
      },
    },
    {
      case: "send",
      value: { target: { case: "conversationId", value: group }, clientMsgId: "c-2", body: "hi all" },
    },
    {
      case: "send",
      value: { target: { case: "conversationId", value: dm }, clientMsgId: "c-3", body: "not mine" },
    },
    { case: "sync", value: { cursor: 0n, limit: 50 } },
    { case: "history", value: { conversationId: group, beforeSeq: 0n, limit: 20 } },
    { case: "createGroup", value: { name: "fuzz", members: [peer] } },
    { case: "addMembers", value: { conversationId: group, members: [peer, "nobody"] } },
    { case: "joinGroup", value: { conversationId: group } },
    { case: "leaveGroup", value: { conversationId: `${group}x` } },
    { case: "listConversations", value: { limit: 10 } },
    { case: "listMembers", value: { conversationId: group } },
    { case: "typing", value: { conversationId: group, typing: true } },
    { case: "heartbeat", value: {} },
    { case: "subscribePresence", value: { userIds: [peer, me] } },
    { case: "unsubscribePresence", value: { userIds: [peer] } },
    { case: "receipt", value: { conversationId: group, seq: 1n, kind: 2 } },
    { case: "registerDevice", value: { deviceId: "d1", provider: 1, token: "t".repeat(40) } },
    { case: "unregisterDevice", value: { deviceId: "d1" } },
    { case: "removeMembers", value: { conversationId: group, members: ["nobody"] } },
    { case: "listReceipts", value: { conversationId: group } },
    { case: "setMemberRole", value: { conversationId: group, userId: peer, role: 2 } },
    { case: "updateGroup", value: { conversationId: group, name: "renamed", open: true } },
    { case: "muteConversation", value: { conversationId: group, untilMs: 0n } },
    { case: "unmuteConversation", value: { conversationId: group } },
    {
      case: "setDoNotDisturb",
      value: { window: { startMinute: 60, endMinute: 120, timeZone: "Europe/Paris" } },
    },
    { case: "getNotificationSettings", value: {} },
  ];
  return kinds.map((kind, i) => ({ id: i + 1, kind }));
}

/** A mutated binary frame: the protobuf encoding of a valid one, damaged. */
function mutateBinary(r: Random, frames: Frame[]): Buffer {
  let b = Buffer.from(toBinary(ClientFrameSchema, create(ClientFrameSchema, r.pick(frames))));
  for (let n = 1 + r.int(3); n > 0; n--) {
    const at = b.length === 0 ? 0 : r.int(b.length);
    switch (r.int(7)) {
      case 0: // flip bits
        if (b.length > 0) b[at] = b[at]! ^ (1 << r.int(8));
        break;
      case 1: // cut
        b = b.subarray(0, at);
        break;
      case 2: // insert garbage
        b = Buffer.concat([b.subarray(0, at), r.bytes(1 + r.int(12)), b.subarray(at)]);
        break;
      case 3: // repeat a slice (fields twice, or a tag without its value)
        b = Buffer.concat([b, b.subarray(at, at + 1 + r.int(16))]);
        break;
      case 4: // a field of any number and wire type, with a varint that may run 10 bytes
        b = Buffer.concat([b, Buffer.from([(r.int(40) << 3) | r.int(6)]), r.bytes(1 + r.int(10))]);
        break;
      case 5: // a length prefix that claims more than there is
        b = Buffer.concat([b, Buffer.from([(11 << 3) | 2, 0xff, 0xff, 0x7f]), r.bytes(r.int(8))]);
        break;
      default: // another frame spliced in
        b = Buffer.concat([
          b.subarray(0, at),
          Buffer.from(toBinary(ClientFrameSchema, create(ClientFrameSchema, r.pick(frames)))),
        ]);
    }
  }
  return b;
}

const ODD_VALUES: unknown[] = [
  null,
  -1,
  2 ** 32,
  2 ** 64,
  1.5,
  "",
  "x".repeat(5_000),
  "\ud800",
  "a\udc00b",
  "😀",
  "-9223372036854775809",
  "18446744073709551616",
  true,
  [],
  [1, "2", null],
  {},
  { nested: { deeper: [{}] } },
  "NOT_AN_ENUM_NAME",
  "\u0000",
];

/** A mutated JSON frame: the proto3 JSON of a valid one, with values, keys or text damaged. */
function mutateJson(r: Random, frames: Frame[]): string {
  const json = JSON.parse(
    toJsonString(ClientFrameSchema, create(ClientFrameSchema, r.pick(frames))),
  ) as Record<string, unknown>;
  const kindKey = Object.keys(json).find((k) => k !== "id");
  const body = (kindKey ? json[kindKey] : undefined) as Record<string, unknown> | undefined;
  switch (r.int(8)) {
    case 0: // a field's value of the wrong type or out of range
      if (body && Object.keys(body).length > 0) body[r.pick(Object.keys(body))] = r.pick(ODD_VALUES);
      else json.id = r.pick(ODD_VALUES);
      break;
    case 1: // the id
      json.id = r.pick(ODD_VALUES);
      break;
    case 2: // an unknown field, or a second request kind
      (body ?? json)[r.pick(["bogus", "toUser", "send", "conversation_id"])] = r.pick(ODD_VALUES);
      break;
    case 3: // a kind's body of the wrong shape, or one element of a list replaced
      {
        const list = body ? Object.values(body).find((v) => Array.isArray(v)) : undefined;
        if (Array.isArray(list) && list.length > 0 && r.chance(0.7))
          list[r.int(list.length)] = r.pick(["x".repeat(5_000), `g:${"1".repeat(3_000)}`, ...ODD_VALUES]);
        else if (kindKey) json[kindKey] = r.pick(ODD_VALUES);
      }
      break;
    case 4: // nesting deeper than any parser should follow
      return `${"[".repeat(200 + r.int(2_000))}1`;
    case 5: {
      // the text cut anywhere
      const text = JSON.stringify(json);
      return text.slice(0, r.int(text.length));
    }
    case 6: // not an object at all, or numbers and keys JSON.stringify would not write
      return r.pick([
        JSON.stringify(r.pick(ODD_VALUES)),
        '{"id":1e400,"heartbeat":{}}',
        '{"id":-0,"sync":{"cursor":1e3,"limit":0.5}}',
        '{"id":1,"__proto__":{"send":{}},"heartbeat":{}}',
        '{"id":1,"heartbeat":{},"heartbeat":{}}',
      ]);
    default: // a field dropped
      if (body && Object.keys(body).length > 0) delete body[r.pick(Object.keys(body))];
  }
  return JSON.stringify(json);
}

interface Tally {
  sent: number;
  replies: number;
  errors: Map<string, number>;
  closes: Map<number, number>;
  /** What broke the protocol: undecodable frames, undocumented reasons or close codes. */
  violations: string[];
}

/** One fuzzing connection after another until FRAMES frames went out; resolves with what came back. */
const newTally = (): Tally => ({ sent: 0, replies: 0, errors: new Map(), closes: new Map(), violations: [] });

async function fuzz(
  server: ServerProcess,
  token: string,
  encoding: "json" | "binary",
  r: Random,
  frames: Frame[],
  tally: Tally,
  stop: { stopped: boolean },
): Promise<void> {
  const reasons = documentedReasons();
  const codes = documentedCloseCodes();
  const protocol = encoding === "json" ? "switchboard.v1.json" : "switchboard.v1.proto";
  while (tally.sent < FRAMES && !stop.stopped) {
    const ws = new WebSocket(server.url, [protocol], {
      headers: { authorization: `Bearer ${token}` },
      handshakeTimeout: 10_000,
    });
    let welcomed!: (ok: boolean) => void;
    const ready = new Promise<boolean>((resolve) => {
      welcomed = resolve;
    });
    let closedByUs = false;
    const closed = new Promise<void>((resolve) => {
      ws.on("close", (code) => {
        if (!closedByUs) {
          tally.closes.set(code, (tally.closes.get(code) ?? 0) + 1);
          if (!codes.has(code)) tally.violations.push(`close ${code} is not in §7`);
        }
        welcomed(false);
        resolve();
      });
    });
    ws.on("error", () => undefined); // the close that follows is what counts
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      tally.replies++;
      try {
        const frame =
          encoding === "binary" && isBinary
            ? fromBinary(ServerFrameSchema, data)
            : fromJsonString(ServerFrameSchema, data.toString("utf8"));
        if (frame.kind.case === "welcome") welcomed(true);
        if (frame.kind.case === "error") {
          const reason = frame.kind.value.reason;
          tally.errors.set(reason, (tally.errors.get(reason) ?? 0) + 1);
          if (!reasons.has(reason)) tally.violations.push(`error reason ${reason} is not in §6`);
        }
      } catch (err) {
        tally.violations.push(
          `an undecodable ${isBinary ? "binary" : "text"} frame: ${String(err).slice(0, 200)}`,
        );
      }
    });
    // The requests go to a session, not to the authentication: wait for the welcome.
    const open = await ready;
    if (!open) await new Promise((resolve) => setTimeout(resolve, 50));
    while (open && ws.readyState === WebSocket.OPEN && tally.sent < FRAMES && !stop.stopped) {
      const frame = encoding === "binary" ? mutateBinary(r, frames) : mutateJson(r, frames);
      ws.send(frame, { binary: encoding === "binary" });
      tally.sent++;
      await new Promise((resolve) => setTimeout(resolve, PACE_MS));
    }
    if (ws.readyState === WebSocket.OPEN) {
      closedByUs = true;
      ws.close(1000);
    }
    await closed;
  }
}

/** A mutated bearer token: a valid one with its parts damaged, swapped, or replaced. */
function mutateToken(r: Random, valid: string): string {
  const [header = "", payload = "", signature = ""] = valid.split(".");
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
  switch (r.int(9)) {
    case 0: {
      // one character of the signature changed
      const at = r.int(signature.length);
      return `${header}.${payload}.${signature.slice(0, at)}${signature[at] === "A" ? "B" : "A"}${signature.slice(at + 1)}`;
    }
    case 1: // alg none, no signature
      return `${b64({ alg: "none", typ: "JWT" })}.${payload}.`;
    case 2: // a payload of another user under the old signature
      return `${header}.${b64({ sub: "someone-else", exp: Math.floor(Date.now() / 1000) + 60 })}.${signature}`;
    case 3: // claims of the wrong types
      return `${header}.${b64(r.pick([{ sub: 42 }, { sub: "x", exp: "soon" }, { sub: "x".repeat(300) }, [], null]))}.${signature}`;
    case 4: // cut
      return valid.slice(0, r.int(valid.length));
    case 5: // more or fewer parts
      return r.pick([`${valid}.${signature}`, `${header}.${payload}`, "..", "...."]);
    case 6: // not base64url
      return `${header}.${payload}.${r.pick(["@@@", "====", "\u0000", " "])}`;
    case 7: // huge
      return `${header}.${"A".repeat(10_000 + r.int(20_000))}.${signature}`;
    default: // garbage
      return r.bytes(1 + r.int(64)).toString("base64");
  }
}

/**
 * Unauthenticated connections, one after another: each sends a few `auth` frames with mutated
 * tokens (or another request first), as JSON. Every answer and close must be in the document; none
 * may authenticate.
 */
async function fuzzAuth(server: ServerProcess, valid: string, r: Random, tally: Tally, connections: number) {
  const reasons = documentedReasons();
  const codes = documentedCloseCodes();
  for (let c = 0; c < connections; c++) {
    const ws = new WebSocket(server.url, ["switchboard.v1.json"]);
    const closed = new Promise<void>((resolve) => {
      ws.on("close", (code) => {
        tally.closes.set(code, (tally.closes.get(code) ?? 0) + 1);
        if (!codes.has(code)) tally.violations.push(`close ${code} is not in §7`);
        resolve();
      });
    });
    ws.on("error", () => undefined);
    ws.on("message", (data: Buffer) => {
      tally.replies++;
      try {
        const frame = fromJsonString(ServerFrameSchema, data.toString("utf8"));
        if (frame.kind.case === "welcome") tally.violations.push("a mutated token authenticated");
        if (frame.kind.case === "error") {
          const reason = frame.kind.value.reason;
          tally.errors.set(reason, (tally.errors.get(reason) ?? 0) + 1);
          if (!reasons.has(reason)) tally.violations.push(`error reason ${reason} is not in §6`);
        }
      } catch (err) {
        tally.violations.push(`an undecodable frame: ${String(err).slice(0, 200)}`);
      }
    });
    const open = await new Promise<boolean>((resolve) => {
      ws.once("open", () => resolve(true));
      ws.once("close", () => resolve(false));
    });
    for (let i = 0; open && i < 3 && ws.readyState === WebSocket.OPEN; i++) {
      const frame = r.chance(0.2)
        ? { id: i + 1, heartbeat: {} }
        : { id: i + 1, auth: { token: mutateToken(r, valid) } };
      ws.send(JSON.stringify(frame));
      tally.sent++;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    // Whatever the server has not closed yet is closed here; the auth timeout would do it later.
    if (ws.readyState === WebSocket.OPEN) {
      ws.removeAllListeners("close");
      ws.close(1000);
    } else await closed;
  }
}

/** The statuses §1.1's table gives a refused upgrade. */
const UPGRADE_REFUSALS = new Set([400, 401, 403, 404, 408, 431, 503]);

/**
 * Upgrades with mutated `Authorization` headers (and, with the valid token, offers of unknown
 * subprotocols only): each must be refused with a status of §1.1, never accepted.
 */
async function fuzzUpgrades(server: ServerProcess, valid: string, r: Random, tally: Tally, attempts: number) {
  for (let i = 0; i < attempts; i++) {
    const badProtocols = r.chance(0.2);
    const headers = badProtocols
      ? {
          authorization: `Bearer ${valid}`,
          "sec-websocket-protocol": r.pick(["chat", "switchboard.v2.json", "x, y"]),
        }
      : {
          authorization: r.pick([
            `Bearer ${mutateToken(r, valid)}`,
            `bearer ${valid}x`,
            `Basic ${valid}`,
            "Bearer",
            `Bearer  ${mutateToken(r, valid)}`,
          ]),
        };
    // Characters no HTTP client can put in a header (a NUL) never reach the server.
    if (!/^[\t\x20-\x7e]*$/.test(headers.authorization)) continue;
    const status = await new Promise<number>((resolve) => {
      const ws = new WebSocket(server.url, { headers });
      ws.once("unexpected-response", (_req, res) => {
        resolve(res.statusCode ?? 0);
        ws.terminate();
      });
      ws.once("open", () => {
        resolve(101);
        ws.terminate();
      });
      ws.once("error", () => resolve(-1));
    });
    tally.sent++;
    tally.closes.set(status, (tally.closes.get(status) ?? 0) + 1);
    if (!UPGRADE_REFUSALS.has(status))
      tally.violations.push(
        `an upgrade with ${badProtocols ? "unknown subprotocols" : "a mutated token"} got ${status}`,
      );
  }
}

let server: ServerProcess;

beforeAll(async () => {
  server = await startServer();
});

afterAll(async () => {
  await server?.stop();
  await server?.dispose();
});

describe("mutated frames by the thousand", () => {
  it("get answers and closes from the protocol document only, and harm no one else", async () => {
    const seed = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 0x7fff_ffff));
    if (!Number.isSafeInteger(seed))
      throw new Error(`FUZZ_SEED must be an integer, not ${process.env.FUZZ_SEED}`);
    const received: IncomingMessage[] = [];
    const [binary, json, auth, upgrades] = [newTally(), newTally(), newTally(), newTally()];
    let chatAcked = 0;
    onTestFailed(() => {
      console.error(
        `fuzz seed ${seed}: FUZZ_SEED=${seed} sends the same frames again; binary ${binary.sent} and json ` +
          `${json.sent} of ${FRAMES} frames sent, ${chatAcked} of alice's messages acknowledged, ` +
          `${received.length} received by bob\n--- server stderr (tail) ---\n${server.stderr().slice(-3_000)}`,
      );
    });
    const tag = `${Date.now().toString(36)}${seed.toString(36)}`;
    const [alice, bob, mallory] = [`fz-alice-${tag}`, `fz-bob-${tag}`, `fz-mallory-${tag}`];
    const client = (user: string) =>
      new SwitchboardClient({ url: server.url, token: () => devToken(server.dataDir, user) });
    const [a, b, m] = [client(alice), client(bob), client(mallory)];
    await Promise.all([a.connect(), b.connect(), m.connect()]);
    const group = (await m.createGroup({ name: `fuzz ${tag}`, members: [bob] })).id;
    // Listening before the send: bob's event may come before alice's ack.
    const dm = `dm:${[alice, bob].sort().join("~")}`;
    b.on("message", (msg) => {
      if (msg.message.conversationId === dm) received.push(msg);
    });
    expect((await a.send({ toUser: bob }, "before")).conversationId).toBe(dm);
    const frames = validFrames(mallory, bob, group, dm);
    const token = await devToken(server.dataDir, mallory);

    // alice and bob talk while mallory's connections send their garbage.
    let chatting = true;
    const bodies: string[] = [];
    const chat = (async () => {
      while (chatting) {
        const body = `m ${bodies.length}`;
        bodies.push(body);
        await a.send({ toUser: bob }, body);
        chatAcked++;
        await new Promise((resolve) => setTimeout(resolve, CHAT_INTERVAL_MS));
      }
    })();
    // A server that exits (a bad frame must never take it down) fails the test at once.
    const exited = new Promise<never>((_, reject) =>
      server.child.once("exit", (code, signal) =>
        reject(new Error(`the server exited (code ${code}, signal ${signal}) while being fuzzed`)),
      ),
    );
    exited.catch(() => undefined);
    const stop = { stopped: false };
    server.child.once("exit", () => {
      stop.stopped = true;
    });
    await Promise.race([
      exited,
      Promise.all([
        fuzz(server, token, "binary", generator(seed), frames, binary, stop),
        fuzz(server, token, "json", generator(seed ^ 0x5bd1e995), frames, json, stop),
        fuzzAuth(server, token, generator(seed ^ 0x2545f491), auth, AUTH_CONNECTIONS),
        fuzzUpgrades(server, token, generator(seed ^ 0x68e31da4), upgrades, UPGRADE_ATTEMPTS),
      ]),
    ]);
    chatting = false;
    await Promise.race([exited, chat]);

    const summary = (t: Tally) =>
      `${t.sent} frames, ${t.replies} frames back, closes ${JSON.stringify(Object.fromEntries(t.closes))}, ` +
      `errors ${JSON.stringify(Object.fromEntries([...t.errors].sort((x, y) => y[1] - x[1]).slice(0, 8)))}`;
    console.log(
      `fuzz seed ${seed}\n  binary: ${summary(binary)}\n  json: ${summary(json)}\n  auth: ${summary(auth)}\n` +
        `  upgrades: ${upgrades.sent}, answered ${JSON.stringify(Object.fromEntries(upgrades.closes))}`,
    );
    expect(
      [...binary.violations, ...json.violations, ...auth.violations, ...upgrades.violations].slice(0, 20),
    ).toEqual([]);
    expect(auth.errors.get("INVALID_TOKEN") ?? 0).toBeGreaterThan(0);
    // Bad input is the client's error, never the server's: no INTERNAL reply, no error logged.
    expect((binary.errors.get("INTERNAL") ?? 0) + (json.errors.get("INTERNAL") ?? 0)).toBe(0);
    const errorLines = server
      .stderr()
      .split("\n")
      // kafkajs logs its own retries at error level (a partition's leader not known yet, right
      // after the test's topics were made); those are the client library's, not a request's.
      .filter((line) => line.includes('"level":"error"') && !line.includes('"logger":"kafkajs"'));
    expect(errorLines.map((line) => line.slice(0, 600))).toEqual([]);
    // The mutations reached the request handlers, not only the decoder.
    expect(binary.errors.get("MALFORMED_FRAME") ?? 0).toBeGreaterThan(0);
    // ... and the request handlers themselves, past the decoder and the session's checks.
    const handled = new Set([...binary.errors.keys(), ...json.errors.keys()]);
    expect(
      ["NOT_MEMBER", "INVALID_CONVERSATION_ID", "NOT_A_GROUP", "INVALID_USER_ID"].filter((r) =>
        handled.has(r),
      ).length,
    ).toBeGreaterThan(2);

    // The server is up, ready, and bob has every message of alice's, once and in order.
    expect(server.child.exitCode).toBeNull();
    expect((await fetch(`${server.httpUrl}/readyz`)).status).toBe(200);
    const deadline = Date.now() + 15_000;
    while (received.length < bodies.length + 1 && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 50));
    expect(received.map((msg) => msg.message.body)).toEqual(["before", ...bodies]);
    expect(received.map((msg) => Number(msg.message.seq))).toEqual(received.map((_, i) => i + 1));
    await Promise.all([a.close(), b.close(), m.close()]);
  }, 120_000);
});
