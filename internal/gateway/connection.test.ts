/**
 * A connection's authentication against stand-ins for its socket and services, where the timing
 * between registration and the welcome, and the services' failures, are the test's to choose.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import type { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { FakeSocket } from "../../test/helpers/fake-socket.js";
import type { StoredMessage } from "../backends/types.js";
import type { Identity } from "../lib/auth.js";
import { loadConfig } from "../lib/config.js";
import { Code, errors, SwitchboardError } from "../lib/errors.js";
import { Limiter } from "../lib/limiter.js";
import { discardingLogger } from "../lib/log.js";
import { createMetrics } from "../lib/metrics.js";
import { inProcessClient, type ServiceClient } from "../lib/rpc.js";
import { Presence, presenceServiceImpl } from "../presence/index.js";
import { shardedPresenceClient } from "../presence/shards.js";
import { CloseCode } from "./close-codes.js";
import { Connection, type GatewayContext } from "./connection.js";
import type { Registration } from "./session-registration.js";

interface Setup {
  env?: Record<string, string>;
  verify?: (token: string) => Promise<Identity>;
  presence?: unknown;
  firstStranger?: (
    user: string,
    others: readonly string[],
    signal?: AbortSignal,
  ) => Promise<string | undefined>;
  head?: (userId: string) => Promise<number>;
  register?: () => Registration;
  inbox?: Record<string, unknown>;
  messages?: Record<string, unknown>;
  membership?: Record<string, unknown>;
  /** More of the context (services, shared limits). */
  ctx?: Record<string, unknown>;
}

function connection(setup: Setup = {}) {
  const socket = new FakeSocket();
  const ctx = {
    config: loadConfig(setup.env ?? {}),
    log: discardingLogger(),
    metrics: createMetrics(),
    backends: {
      inbox: { head: setup.head ?? (async () => 0), ...setup.inbox },
      ...(setup.messages ? { messages: setup.messages } : {}),
      ...(setup.membership ? { membership: setup.membership } : {}),
    },
    presence: setup.presence ?? { heartbeat: async () => ({}) },
    firstStranger: setup.firstStranger ?? (async () => undefined),
    takePresenceSubscribe: () => 0,
    takeUserTyping: () => () => {},
    takeUserListing: () => 0,
    chargeUserListing: () => {},
    takeUserRead: () => 0,
    chargeUserRead: () => {},
    watcherId: "gateway-1/1/test",
    verify: setup.verify ?? (async () => ({ userId: "alice", expiresAtMs: Number.POSITIVE_INFINITY })),
    hasRoomFor: () => true,
    register: setup.register ?? (() => ({ inTime: Promise.resolve(true), written: Promise.resolve() })),
    unregister: () => {},
    ...setup.ctx,
  } as unknown as GatewayContext;
  const conn = new Connection(ctx, socket as never, "session-1", "json");
  return { conn, socket };
}

const until = async (pred: () => boolean) => {
  for (let i = 0; i < 200 && !pred(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(pred()).toBe(true);
};

/** Sends a request frame of id `id` and returns its reply. */
const answerer = (socket: FakeSocket) => async (id: number, frame: Record<string, unknown>) => {
  socket.frame({ id, ...frame });
  await until(() => socket.sent.some((f) => f.replyTo === id));
  return socket.sent.find((f) => f.replyTo === id)!;
};

const kinds = (socket: FakeSocket) =>
  socket.sent.map((f) => (f.kind.case === "error" ? f.kind.value.reason : f.kind.case));

describe("Connection authentication", () => {
  it("holds what is written between registration and the welcome, and writes it after the welcome", async () => {
    let answerHead!: (head: number) => void;
    const { conn, socket } = connection({ head: () => new Promise((r) => (answerHead = r)) });
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => answerHead !== undefined);
    // Registered, the head not read yet: an event for the user arrives (a typing indicator).
    conn.sendRaw(JSON.stringify({ typing: { conversationId: "dm:alice~bob", userId: "bob", typing: true } }));
    expect(socket.sent).toHaveLength(0);
    answerHead(7);
    await until(() => socket.sent.length === 2);
    expect(kinds(socket)).toEqual(["welcome", "typing"]);
    expect(socket.sent[0]!.replyTo).toBe(1);
  });

  it("welcomes a session whose routing record is not written in time, and looks at its inbox once it is", async () => {
    let late!: () => void;
    let written!: () => void;
    const { conn, socket } = connection({
      register: () => ({
        inTime: new Promise<boolean>((r) => (late = () => r(false))),
        written: new Promise<void>((r) => (written = r)),
      }),
    });
    const recheck = vi.spyOn(conn, "recheckInbox");
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => late !== undefined);
    await new Promise((r) => setTimeout(r, 10));
    expect(socket.sent).toHaveLength(0); // waits for the registration
    late();
    await until(() => socket.sent.length === 1);
    expect(kinds(socket)).toEqual(["welcome"]);
    expect(socket.closedWith).toBeUndefined();
    expect(recheck).not.toHaveBeenCalled();
    written();
    await until(() => recheck.mock.calls.length === 1);
  });

  it("welcomes a session registered in time without looking at its inbox again", async () => {
    const { conn, socket } = connection();
    const recheck = vi.spyOn(conn, "recheckInbox");
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => socket.sent.length === 1);
    expect(kinds(socket)).toEqual(["welcome"]);
    await new Promise((r) => setTimeout(r, 10));
    expect(recheck).not.toHaveBeenCalled();
  });

  it("answers an auth frame whose session cannot be set up with its error, then closes with 1011", async () => {
    const { socket } = connection({
      head: async () => {
        throw errors.unavailable("STORAGE_UNAVAILABLE", "no replica answered");
      },
    });
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => socket.closedWith !== undefined);
    expect(kinds(socket)).toEqual(["STORAGE_UNAVAILABLE"]);
    expect(socket.sent[0]!.replyTo).toBe(1);
    expect(socket.closedWith).toBe(CloseCode.INTERNAL_ERROR);
  });

  it("tells the client an error's public message, not the internal call's detail", async () => {
    const { socket } = connection({
      head: async () => {
        throw new SwitchboardError(
          Code.UNAVAILABLE,
          "UNAVAILABLE",
          "internal call switchboard.router.v1.RouterService/Relay failed: UNAVAILABLE: connect ECONNREFUSED 10.0.0.7:9090",
          { publicMessage: "internal call switchboard.router.v1.RouterService/Relay failed: UNAVAILABLE" },
        );
      },
    });
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => socket.closedWith !== undefined);
    const error = socket.sent[0]!.kind;
    expect(error.case).toBe("error");
    expect(error.case === "error" && error.value.message).toBe(
      "internal call switchboard.router.v1.RouterService/Relay failed: UNAVAILABLE",
    );
  });

  it("closes with the reconnect-class 1011, not 3500, when the token cannot be checked now", async () => {
    const { socket } = connection({
      verify: async () => {
        throw errors.unavailable("AUTH_UNAVAILABLE", "the key set could not be fetched");
      },
    });
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => socket.closedWith !== undefined);
    expect(kinds(socket)).toEqual(["AUTH_UNAVAILABLE"]);
    expect(socket.closedWith).toBe(CloseCode.INTERNAL_ERROR);
  });

  it("never registers a connection that closed while its token was being checked", async () => {
    let verified!: (identity: Identity) => void;
    let registered = 0;
    const { socket } = connection({
      verify: () => new Promise((r) => (verified = r)),
      register: () => {
        registered++;
        return { inTime: Promise.resolve(true), written: Promise.resolve() };
      },
    });
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => verified !== undefined);
    socket.emit("close", 1006, Buffer.alloc(0));
    verified({ userId: "alice", expiresAtMs: Number.POSITIVE_INFINITY });
    await new Promise((r) => setTimeout(r, 20));
    expect(registered).toBe(0);
    expect(socket.sent).toHaveLength(0);
  });

  it("answers an auth frame whose token was being checked when a drain began with GATEWAY_STOPPING, then closes", async () => {
    let verified!: (identity: Identity) => void;
    let registered = 0;
    const { conn, socket } = connection({
      verify: () => new Promise((r) => (verified = r)),
      register: () => {
        registered++;
        return { inTime: Promise.resolve(true), written: Promise.resolve() };
      },
    });
    socket.frame({ id: 7, auth: { token: "t" } });
    await until(() => verified !== undefined);
    const closed = conn.closeAfterReplies(CloseCode.SHUTDOWN, "draining", 5_000);
    verified({ userId: "alice", expiresAtMs: Number.POSITIVE_INFINITY });
    await closed;
    expect(kinds(socket)).toEqual(["GATEWAY_STOPPING"]);
    expect(socket.sent[0]!.replyTo).toBe(7);
    expect(socket.sent[0]!.kind.value).toMatchObject({ code: Code.UNAVAILABLE, retryAfterMs: 1000 });
    expect(socket.closedWith).toBe(CloseCode.SHUTDOWN);
    expect(registered).toBe(0);
  });

  it("answers an auth frame whose token was being checked when a flood's close began RATE_LIMITED, not GATEWAY_STOPPING", async () => {
    let verified!: (identity: Identity) => void;
    const { conn, socket } = connection({ verify: () => new Promise((r) => (verified = r)) });
    socket.frame({ id: 3, auth: { token: "t" } });
    await until(() => verified !== undefined);
    const closed = conn.closeAfterReplies(CloseCode.TOO_MANY_REQUESTS, "too many frames", 5_000);
    verified({ userId: "alice", expiresAtMs: Number.POSITIVE_INFINITY });
    await closed;
    expect(kinds(socket)).toEqual(["RATE_LIMITED"]);
    expect(socket.closedWith).toBe(CloseCode.TOO_MANY_REQUESTS);
  });

  it("answers a token still being checked at the auth deadline with AUTH_UNAVAILABLE and 1011, not the terminal 3502", async () => {
    const { conn, socket } = connection({
      env: { SWITCHBOARD_AUTH_AUTH_TIMEOUT_MS: "100" },
      verify: () => new Promise(() => {}), // the key set's endpoint never answers
    });
    conn.awaitAuth();
    await new Promise((r) => setTimeout(r, 60));
    socket.frame({ id: 1, auth: { token: "t" } }); // in time
    await until(() => socket.closedWith !== undefined);
    expect(kinds(socket)).toEqual(["AUTH_UNAVAILABLE"]);
    expect(socket.sent[0]!.replyTo).toBe(1);
    expect(socket.closedWith).toBe(CloseCode.INTERNAL_ERROR);
  });

  it("welcomes in the encoding of the auth frame, whatever frame came after it", async () => {
    let verified!: (identity: Identity) => void;
    const { socket } = connection({ verify: () => new Promise((r) => (verified = r)) });
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => verified !== undefined);
    // A binary frame (not a valid one) arrives before the token is checked.
    socket.emit("message", Buffer.from([0xff]), true);
    verified({ userId: "alice", expiresAtMs: Number.POSITIVE_INFINITY });
    await until(() => socket.sent.some((f) => f.kind.case === "welcome"));
    const welcome = socket.sent.findIndex((f) => f.kind.case === "welcome");
    expect(socket.sent[welcome]!.replyTo).toBe(1);
    expect(socket.encodings[welcome]).toBe("json");
  });

  it("refuses a request with a lone surrogate before the welcome as AUTH_REQUIRED, under its id", async () => {
    const { socket } = connection();
    socket.frame({ id: 4, send: { toUser: "bob", clientMsgId: "c-1", body: "\ud800" } });
    await until(() => socket.sent.length === 1);
    expect(kinds(socket)).toEqual(["AUTH_REQUIRED"]);
    expect(socket.sent[0]!.replyTo).toBe(4);
  });
});

/**
 * An inbox whose reads take their result when called and return it when the test says: what a read
 * that began before an entry was written returns after the entry's live event arrived.
 */
function slowInbox() {
  const entries: Array<{
    userId: string;
    cursor: number;
    conversationId: string;
    seq: number;
    messageId: string;
  }> = [];
  const stored = new Map<string, StoredMessage>();
  let held: Array<() => void> | undefined;
  const add = (cursor: number) => {
    const message: StoredMessage = {
      conversationId: "dm:alice~bob",
      seq: cursor,
      messageId: String(1_000 + cursor), // a Snowflake id: decimal
      sender: "bob",
      clientMsgId: `c${cursor}`,
      body: `hello ${cursor}`,
      createdAtMs: 1,
    };
    stored.set(`${message.conversationId}/${message.seq}`, message);
    entries.push({
      userId: "alice",
      cursor,
      conversationId: message.conversationId,
      seq: cursor,
      messageId: message.messageId,
    });
    return message;
  };
  const setup: Setup = {
    head: async () => entries.length,
    inbox: {
      read: async (_: string, after: number, limit: number) => {
        const result = entries.filter((e) => e.cursor > after).slice(0, limit);
        if (held) await new Promise<void>((r) => held!.push(r));
        return result;
      },
    },
    messages: {
      getMany: async (keys: Array<{ conversationId: string; seq: number }>) =>
        keys.map((k) => stored.get(`${k.conversationId}/${k.seq}`)!),
    },
  };
  return {
    setup,
    add,
    hold: () => {
      held = [];
    },
    /** Lets the held reads return, and reads after them run at once. */
    release: () => {
      const waiting = held ?? [];
      held = undefined;
      for (const r of waiting) r();
    },
    holding: () => (held?.length ?? 0) > 0,
  };
}

const messageCursors = (socket: FakeSocket) =>
  socket.sent.flatMap((f) => {
    if (f.kind.case === "message") return [Number(f.kind.value.cursor)];
    if (f.kind.case === "sync") return f.kind.value.messages.map((m) => Number(m.cursor));
    return [];
  });

describe("Connection: the seam between the inbox and live events", () => {
  const encoded = (message: StoredMessage, cursor: number) => () =>
    JSON.stringify({
      message: {
        message: { ...message, seq: String(message.seq), createdAtMs: "1" },
        cursor: String(cursor),
      },
    });
  const live = (conn: Connection, message: StoredMessage, cursor: number) =>
    conn.deliverMessage({ message: message as never, cursor: BigInt(cursor) }, encoded(message, cursor));

  async function welcomed(inbox: ReturnType<typeof slowInbox>) {
    const { conn, socket } = connection(inbox.setup);
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => socket.sent.length === 1);
    return { conn, socket };
  }

  it("a sync whose read missed an entry whose live event came during it reads again, not hasMore with nothing", async () => {
    const inbox = slowInbox();
    const { conn, socket } = await welcomed(inbox);
    inbox.hold();
    socket.frame({ id: 2, sync: { cursor: "0" } });
    await until(inbox.holding);
    live(conn, inbox.add(1), 1); // written and sent while the read was under way: held back
    inbox.release();
    await until(() => socket.sent.some((f) => f.kind.case === "sync"));
    const reply = socket.sent.find((f) => f.kind.case === "sync")!;
    expect(reply.kind.case === "sync" && reply.kind.value.hasMore).toBe(false);
    expect(messageCursors(socket)).toEqual([1]);
  });

  it("a catch-up whose read missed an entry whose live event came during it reads again before going live", async () => {
    const inbox = slowInbox();
    const { conn, socket } = await welcomed(inbox);
    socket.frame({ id: 2, sync: { cursor: "0" } });
    await until(() => socket.sent.some((f) => f.kind.case === "sync"));
    inbox.hold();
    conn.recheckInbox(); // a router's stream broke
    await until(inbox.holding);
    live(conn, inbox.add(1), 1);
    inbox.release();
    await until(() => messageCursors(socket).length > 0);
    live(conn, inbox.add(2), 2);
    expect(messageCursors(socket)).toEqual([1, 2]);
  });

  it("a sync refused before it took the seam over leaves it to the catch-up it stopped: the connection is live again", async () => {
    const inbox = slowInbox();
    const waits: number[] = [];
    const { conn, socket } = connection({ ...inbox.setup, ctx: { takeUserRead: () => waits.shift() ?? 0 } });
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => socket.sent.length === 1);
    socket.frame({ id: 2, sync: { cursor: "0" } });
    await until(() => socket.sent.some((f) => f.replyTo === 2));
    const refused = (id: number) =>
      socket.sent.find((f) => f.replyTo === id)?.kind.value as { reason?: string };

    // Refused while the catch-up still reads: the catch-up goes on with what it read.
    inbox.hold();
    conn.recheckInbox(); // a router's stream broke
    await until(inbox.holding);
    live(conn, inbox.add(1), 1); // not live: held back for the catch-up
    waits.push(5_000);
    socket.frame({ id: 3, sync: { cursor: "0" } });
    await until(() => refused(3)?.reason === "RATE_LIMITED");
    inbox.release();
    await until(() => messageCursors(socket).length === 1);
    live(conn, inbox.add(2), 2);
    expect(messageCursors(socket)).toEqual([1, 2]);

    // Refused after the catch-up stopped for it (the sync waited for the budget meanwhile): the
    // catch-up starts again.
    inbox.hold();
    conn.recheckInbox();
    await until(inbox.holding);
    live(conn, inbox.add(3), 3);
    waits.push(300, 5_000); // waits 300 ms, then would wait too long
    socket.frame({ id: 4, sync: { cursor: "0" } });
    await new Promise((r) => setTimeout(r, 50));
    inbox.release(); // the catch-up sees the sync and stops
    await until(() => refused(4)?.reason === "RATE_LIMITED");
    await until(() => messageCursors(socket).length === 3);
    live(conn, inbox.add(4), 4);
    expect(messageCursors(socket)).toEqual([1, 2, 3, 4]);
  });

  it("a recheck asked for while a sync reads is done once the sync is over", async () => {
    const inbox = slowInbox();
    const { conn, socket } = await welcomed(inbox);
    inbox.hold();
    socket.frame({ id: 2, sync: { cursor: "0" } });
    await until(inbox.holding);
    inbox.add(1); // its live event was lost (a router's stream broke), hence the recheck
    conn.recheckInbox();
    inbox.release();
    await until(() => messageCursors(socket).length > 0);
    expect(messageCursors(socket)).toEqual([1]);
  });
});

describe("Connection presence watches", () => {
  const store = {
    setLastActive: async () => undefined,
    lastActive: async () => new Map(),
    close: async () => undefined,
  };
  const router = { relay: async () => ({ sessions: 0 }) } as unknown as ServiceClient<typeof RouterService>;
  const presence = () =>
    new Presence({ offlineAfterMs: 60_000, store, router: () => router, log: discardingLogger() });
  const clientOf = (p: Presence) => inProcessClient(PresenceService, presenceServiceImpl(p, store));

  async function welcomed(setup: Setup) {
    const { conn, socket } = connection(setup);
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => kinds(socket).includes("welcome"));
    return { conn, socket };
  }

  it("holds a connection to 1,000 watches however many presence shards hold them", async () => {
    const shards = [presence(), presence()];
    const { socket } = await welcomed({ presence: shardedPresenceClient(shards.map(clientOf)) });
    for (let i = 0; i < 10; i++) {
      const userIds = Array.from({ length: 100 }, (_, j) => `u${i * 100 + j}`);
      socket.frame({ id: 10 + i, subscribePresence: { userIds } });
    }
    await until(() => kinds(socket).filter((k) => k === "presenceSnapshot").length === 10);
    // Each shard holds about half: only the connection's count can refuse the 1,001st.
    socket.frame({ id: 30, subscribePresence: { userIds: ["u0", "one-more"] } });
    await until(() => kinds(socket).includes("TOO_MANY_WATCHES"));
    expect(socket.sent.at(-1)!.replyTo).toBe(30);
    // Users watched already are no new watches.
    socket.frame({ id: 31, subscribePresence: { userIds: ["u0", "u999"] } });
    await until(() => socket.sent.at(-1)!.replyTo === 31);
    expect(kinds(socket).at(-1)).toBe("presenceSnapshot");
    await Promise.all(shards.map((p) => p.close()));
  });

  it("takes back the watches of a subscribe that ends after its connection closed", async () => {
    const p = presence();
    const client = clientOf(p);
    let unsubscribed = 0;
    let release!: () => void;
    const checked = new Promise<void>((r) => (release = r));
    const { socket } = await welcomed({
      presence: {
        ...client,
        unsubscribe: async (req: { sessionId: string; userIds: string[] }) => {
          unsubscribed++;
          return client.unsubscribe(req);
        },
      },
      firstStranger: async () => {
        await checked;
        return undefined;
      },
    });
    socket.frame({ id: 2, subscribePresence: { userIds: ["bob", "carol"] } });
    await new Promise((r) => setTimeout(r, 10));
    socket.emit("close", 1006, Buffer.alloc(0)); // the session's end reaches presence now
    release();
    await until(() => unsubscribed === 1);
    expect(p.watchCounts().sessions).toBe(0);
    await p.close();
  });

  it("does not let an unsubscribe overtake the subscribe sent before it", async () => {
    const p = presence();
    const { socket } = await welcomed({
      presence: clientOf(p),
      // The contact check takes a while (reads); the unsubscribe needs none.
      firstStranger: () => new Promise((r) => setTimeout(() => r(undefined), 20)),
    });
    socket.frame({ id: 2, subscribePresence: { userIds: ["bob"] } });
    socket.frame({ id: 3, unsubscribePresence: { userIds: ["bob"] } });
    await until(() => socket.sent.some((f) => f.replyTo === 3));
    expect(socket.sent.slice(1).map((f) => [f.replyTo, f.kind.case])).toEqual([
      [2, "presenceSnapshot"],
      [3, "ok"],
    ]);
    expect(p.watchCounts().sessions).toBe(0);
    await p.close();
  });

  it("runs one subscribe at a time and checks only the users it does not watch yet", async () => {
    const p = presence();
    const asked: string[][] = [];
    let running = 0;
    let most = 0;
    const { socket } = await welcomed({
      presence: clientOf(p),
      firstStranger: async (_user, others) => {
        asked.push([...others]);
        most = Math.max(most, ++running);
        await new Promise((r) => setTimeout(r, 10));
        running--;
        return undefined;
      },
    });
    socket.frame({ id: 2, subscribePresence: { userIds: ["bob", "carol", "alice"] } });
    socket.frame({ id: 3, subscribePresence: { userIds: ["bob", "carol", "dave"] } });
    socket.frame({ id: 4, subscribePresence: { userIds: ["carol", "dave"] } });
    await until(() => kinds(socket).filter((k) => k === "presenceSnapshot").length === 3);
    // Yourself is no contact to check; those watched already are not checked again, and a request
    // of only watched users reads nothing.
    expect(asked).toEqual([["bob", "carol"], ["dave"]]);
    expect(most).toBe(1);
    expect(socket.sent.at(-1)!.kind.value).toMatchObject({
      statuses: [{ userId: "carol" }, { userId: "dave" }],
    });
    await p.close();
  });

  it("answers a subscribe whose contact check takes past 15 s DEADLINE_EXCEEDED, and goes on with the next", async () => {
    const p = presence();
    let signal: AbortSignal | undefined;
    const { conn, socket } = await welcomed({
      presence: clientOf(p),
      // A membership read that hangs (Cassandra allows each 30 s, and a check may take ~140).
      firstStranger: (_user, _others, s) => {
        signal = s;
        return new Promise(() => undefined);
      },
    });
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    try {
      socket.frame({ id: 2, subscribePresence: { userIds: ["bob"] } });
      socket.frame({ id: 3, unsubscribePresence: { userIds: ["carol"] } });
      await vi.advanceTimersByTimeAsync(14_999);
      expect(socket.sent.filter((f) => f.replyTo >= 2)).toEqual([]);
      await vi.advanceTimersByTimeAsync(1);
    } finally {
      vi.useRealTimers();
    }
    await until(() => socket.sent.some((f) => f.replyTo === 3));
    expect(socket.sent.slice(1).map((f) => [f.replyTo, kinds({ sent: [f] } as FakeSocket)[0]])).toEqual([
      [2, "DEADLINE_EXCEEDED"],
      [3, "ok"],
    ]);
    const refusal = socket.sent[1]!.kind.value as { code: number; retryAfterMs: number };
    expect(refusal).toMatchObject({ code: Code.DEADLINE_EXCEEDED, retryAfterMs: 1_000 });
    expect(signal?.aborted).toBe(true); // the check reads no more
    expect(conn.watched.size).toBe(0);
    expect(p.watchCounts().sessions).toBe(0);
    await p.close();
  });

  it("answers a refused subscribe before the unsubscribe sent after it", async () => {
    const p = presence();
    const { socket } = await welcomed({ presence: clientOf(p), firstStranger: async () => "bob" });
    socket.frame({ id: 2, subscribePresence: { userIds: ["bob"] } });
    socket.frame({ id: 3, unsubscribePresence: { userIds: ["bob"] } });
    await until(() => socket.sent.some((f) => f.replyTo === 2) && socket.sent.some((f) => f.replyTo === 3));
    expect(socket.sent.slice(1).map((f) => [f.replyTo, kinds({ sent: [f] } as FakeSocket)[0]])).toEqual([
      [2, "NOT_A_CONTACT"],
      [3, "ok"],
    ]);
    await p.close();
  });

  it("subscribes its watches again at once, not behind a presence request that waits on slow reads", async () => {
    const p = presence();
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let checks = 0;
    const { conn, socket } = await welcomed({
      presence: clientOf(p),
      firstStranger: async () => {
        if (++checks > 1) await held; // the second subscribe's reads hang
        return undefined;
      },
    });
    socket.frame({ id: 2, subscribePresence: { userIds: ["bob"] } });
    await until(() => socket.sent.some((f) => f.replyTo === 2));
    socket.frame({ id: 3, subscribePresence: { userIds: ["carol"] } });
    await until(() => checks === 2);
    // The shard lost the watches (restarted): the gateway's pass subscribes them again.
    const restarted = presence();
    const renewal = conn.renewWatches(clientOf(restarted), () => true);
    const answer = await Promise.race([renewal, new Promise((r) => setTimeout(() => r("waiting"), 500))]);
    expect(answer).toBe(1); // bob (carol is not watched before her check ends)
    expect(restarted.watchCounts().sessions).toBe(1);
    release();
    await until(() => socket.sent.some((f) => f.replyTo === 3));
    await Promise.all([p.close(), restarted.close()]);
  });

  it("takes back a watch renewed while the client unsubscribed it", async () => {
    const p = presence();
    const client = clientOf(p);
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const { conn, socket } = await welcomed({ presence: client });
    socket.frame({ id: 2, subscribePresence: { userIds: ["bob"] } });
    await until(() => socket.sent.some((f) => f.replyTo === 2));
    // The renewal's subscribe reaches presence only after the unsubscribe did.
    const renewal = conn.renewWatches(
      {
        subscribe: async (req) => {
          await held;
          return client.subscribe(req);
        },
        unsubscribe: (req) => client.unsubscribe(req),
      },
      () => true,
    );
    socket.frame({ id: 3, unsubscribePresence: { userIds: ["bob"] } });
    await until(() => socket.sent.some((f) => f.replyTo === 3));
    release();
    await renewal;
    expect(conn.watched.size).toBe(0);
    expect(p.watchCounts().sessions).toBe(0);
    await p.close();
  });

  it("refuses a subscribe past ten unanswered (the one being handled among them), as RATE_LIMITED", async () => {
    const p = presence();
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let checking = 0;
    const { socket } = await welcomed({
      presence: clientOf(p),
      firstStranger: async () => {
        checking++;
        await held;
        return undefined;
      },
    });
    for (let i = 0; i < 11; i++) socket.frame({ id: 10 + i, subscribePresence: { userIds: [`u${i}`] } });
    await until(() => kinds(socket).includes("RATE_LIMITED"));
    // One being handled and nine waiting: the eleventh is refused.
    expect(checking).toBe(1);
    expect(socket.sent.at(-1)!.replyTo).toBe(20);
    release();
    await until(() => kinds(socket).filter((k) => k === "presenceSnapshot").length === 10);
    await p.close();
  });
});

describe("Connection typing", () => {
  /**
   * A welcomed connection of alice in conversations of one delivery model, what it relayed, and a
   * clock that stands still unless the test moves it (the limits are read from it).
   */
  async function typist(delivery: "push" | "pull", ctx: Record<string, unknown> = {}) {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(1_800_000_000_000);
    const relayed: boolean[] = [];
    const { socket } = connection({
      membership: { members: async () => ["alice", "bob"] },
      ctx: {
        conversations: {
          memberAccess: async (_user: string, id: string) => ({
            record: { id, ...(delivery === "pull" ? { delivery } : {}) },
            role: "member",
          }),
        },
        relays: () => ({
          relay: async (req: { frame: { kind: { value: { typing: boolean } } } }) => {
            relayed.push(req.frame.kind.value.typing);
            return {};
          },
        }),
        takePullTyping: () => true,
        ...ctx,
      },
    });
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => kinds(socket).includes("welcome"));
    let nextId = 10;
    const typing = async (on: boolean, conversationId = "g:1") => {
      const id = nextId++;
      socket.frame({ id, typing: { conversationId, typing: on } });
      await until(() => socket.sent.some((f) => f.replyTo === id));
      expect(kinds(socket).at(-1)).toBe("ok"); // dropped or not, every one is answered ok
    };
    const later = (ms: number) => vi.setSystemTime(Date.now() + ms);
    return { relayed, typing, later };
  }
  afterEach(() => {
    vi.useRealTimers();
  });

  it("relays a stop only after a start that was relayed, in either delivery model", async () => {
    for (const delivery of ["push", "pull"] as const) {
      const { relayed, typing } = await typist(delivery);
      for (let i = 0; i < 5; i++) await typing(false); // no start went out: nothing to stop
      expect(relayed).toEqual([]);
      await typing(true);
      await typing(false);
      await typing(false);
      expect(relayed, delivery).toEqual([true, false]);
    }
  });

  it("relays a start renewed while shown every 2 s, and a pull conversation's starts every 2 s", async () => {
    const push = await typist("push");
    await push.typing(true);
    await push.typing(true);
    push.later(1_999);
    await push.typing(true);
    push.later(1);
    await push.typing(true); // 2 s after the last that went out: the renewal goes out
    expect(push.relayed).toEqual([true, true]);
    await push.typing(false);
    await push.typing(true); // not shown after the stop: goes out at once
    await push.typing(true); // shown again, and the last start went out just now
    expect(push.relayed).toEqual([true, true, false, true]);
    const pull = await typist("pull");
    await pull.typing(true);
    await pull.typing(false);
    pull.later(1_000);
    await pull.typing(true); // within 2 s of the last start, whatever came between: dropped
    pull.later(1_000);
    await pull.typing(true);
    expect(pull.relayed).toEqual([true, false, true]);
  });

  it("relays at most a burst of 20 starts per connection in all conversations, and what another limit refused takes nothing", async () => {
    // Starts and stops as fast as the frame rate allows, spread over conversations: each start
    // takes a token (their stops follow them), so the fan-out of one connection stays bounded.
    const { relayed, typing } = await typist("push");
    for (let i = 0; i < 30; i++) {
      await typing(true, `g:${i}`);
      await typing(false, `g:${i}`);
    }
    expect(relayed.filter((t) => t)).toHaveLength(20);
    expect(relayed.filter((t) => !t)).toHaveLength(20);
    // The user's budget refuses two starts: they take none of the connection's twenty.
    let userBudget = 3;
    const shared = await typist("push", {
      takeUserTyping: () => (userBudget-- > 0 ? () => userBudget++ : undefined),
    });
    for (let i = 0; i < 5; i++) await shared.typing(true, `g:${i}`);
    expect(shared.relayed).toHaveLength(3);
    userBudget = 100;
    for (let i = 5; i < 23; i++) await shared.typing(true, `g:${i}`);
    expect(shared.relayed).toHaveLength(20);
    // A pull conversation's limit on this gateway refusing gives both tokens back.
    let pullBudget = 0;
    let userTaken = 0;
    const large = await typist("pull", {
      takePullTyping: () => pullBudget-- > 0,
      takeUserTyping: () => {
        userTaken++;
        return () => userTaken--;
      },
    });
    for (let i = 0; i < 25; i++) await large.typing(true, `g:${i}`);
    expect(large.relayed).toEqual([]);
    expect(userTaken).toBe(0);
    pullBudget = 100;
    for (let i = 0; i < 25; i++) await large.typing(true, `g:${100 + i}`);
    expect(large.relayed).toHaveLength(20);
    expect(userTaken).toBe(20);
  });

  it("relays a stop again after its relay failed, and decides a start and a stop in the order they came", async () => {
    let failNext = false;
    const relayed: boolean[] = [];
    // The first membership read (the start's) is the slowest.
    const accessDelaysMs = [30];
    const { socket } = connection({
      membership: { members: async () => ["alice", "bob"] },
      ctx: {
        conversations: {
          memberAccess: async (_user: string, id: string) => {
            await new Promise((r) => setTimeout(r, accessDelaysMs.shift() ?? 0));
            return { record: { id }, role: "member" };
          },
        },
        relays: () => ({
          relay: async (req: { frame: { kind: { value: { typing: boolean } } } }) => {
            if (failNext) {
              failNext = false;
              throw new SwitchboardError(Code.UNAVAILABLE, "UNAVAILABLE", "no router took it");
            }
            relayed.push(req.frame.kind.value.typing);
            return {};
          },
        }),
      },
    });
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => kinds(socket).includes("welcome"));
    const answered = (id: number) => until(() => socket.sent.some((f) => f.replyTo === id));
    // A start and its stop at once: the stop's read ends first, yet the start is decided first.
    socket.frame({ id: 2, typing: { conversationId: "g:1", typing: true } });
    socket.frame({ id: 3, typing: { conversationId: "g:1", typing: false } });
    await answered(2);
    await answered(3);
    expect(relayed).toEqual([true, false]);
    socket.frame({ id: 4, typing: { conversationId: "g:1", typing: true } });
    await answered(4);
    failNext = true;
    socket.frame({ id: 5, typing: { conversationId: "g:1", typing: false } });
    await answered(5);
    expect(kinds(socket).at(-1)).toBe("UNAVAILABLE");
    socket.frame({ id: 6, typing: { conversationId: "g:1", typing: false } });
    await answered(6);
    expect(kinds(socket).at(-1)).toBe("ok");
    expect(relayed).toEqual([true, false, true, false]); // the retry of the stop went out
  });
});

describe("Connection requests after bad input or a close", () => {
  it("refuses a mute more than 10 years ahead as INVALID_MUTE (a storage TTL cannot hold it)", async () => {
    const { socket } = connection({
      ctx: { conversations: { memberAccess: async () => ({ record: { id: "g:1" }, role: "member" }) } },
    });
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => kinds(socket).includes("welcome"));
    const year = 365 * 24 * 3600 * 1000;
    socket.frame({
      id: 2,
      muteConversation: { conversationId: "g:1", untilMs: String(Date.now() + 25 * year) },
    });
    await until(() => socket.sent.some((f) => f.replyTo === 2));
    expect(kinds(socket).at(-1)).toBe("INVALID_MUTE");
  });

  it("does not read for syncs still queued when the connection closed", async () => {
    let heads = 0;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const { socket } = connection({
      head: async () => {
        if (++heads > 1) await held; // the welcome's read answers; the first sync's waits
        return 0;
      },
      inbox: { read: async () => [] },
    });
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => kinds(socket).includes("welcome"));
    for (let id = 2; id < 12; id++) socket.frame({ id, sync: { cursor: "0" } });
    await until(() => heads === 2);
    socket.emit("close", 1006, Buffer.alloc(0));
    release();
    await new Promise((r) => setTimeout(r, 30));
    expect(heads).toBe(2);
  });
});

describe("Connection: closing after the replies", () => {
  /** A welcomed connection whose sync reads wait for `held` (after the welcome's own read). */
  async function withHeldSync() {
    let heads = 0;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const { conn, socket } = connection({
      head: async () => {
        if (++heads > 1) await held;
        return 0;
      },
      inbox: { read: async () => [] },
    });
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => kinds(socket).includes("welcome"));
    socket.frame({ id: 2, sync: { cursor: "0" } });
    await until(() => heads === 2);
    return { conn, socket, release };
  }

  it("answers the request it had read, reads no frame after, then closes", async () => {
    const { conn, socket, release } = await withHeldSync();
    const closed = conn.closeAfterReplies(CloseCode.GOING_AWAY, "server shutting down", 2_000);
    socket.frame({ id: 3, heartbeat: {} }); // after the stop began: not read
    await new Promise((r) => setTimeout(r, 20));
    expect(socket.closedWith).toBeUndefined();
    release();
    await closed;
    expect(socket.sent.some((f) => f.replyTo === 2 && f.kind.case === "sync")).toBe(true);
    expect(socket.sent.some((f) => f.replyTo === 3)).toBe(false);
    expect(socket.closedWith).toBe(CloseCode.GOING_AWAY);
  });

  it("a stop during a flood's wait closes within the stop's bound, not the flood's", async () => {
    const { conn, socket } = await withHeldSync(); // the sync never answers
    void conn.closeAfterReplies(CloseCode.TOO_MANY_REQUESTS, "too many frames", 60_000);
    const started = Date.now();
    await conn.closeAfterReplies(CloseCode.GOING_AWAY, "server shutting down", 50);
    expect(Date.now() - started).toBeLessThan(1_000);
    // Closed once, with the first call's code.
    expect(socket.closedWith).toBe(CloseCode.TOO_MANY_REQUESTS);
  });
});

describe("Connection listings", () => {
  /** conversationsOf held until released, each call counted. */
  function heldListings() {
    const held: Array<() => void> = [];
    let calls = 0;
    const membership = {
      conversationsOf: () => {
        calls++;
        return new Promise<never[]>((resolve) => held.push(() => resolve([])));
      },
    };
    return { membership, held, calls: () => calls };
  }
  const authed = async (socket: FakeSocket) => {
    socket.frame({ id: 1, auth: { token: "t" } });
    await until(() => socket.sent.length === 1);
  };

  it("answers a connection's listings one at a time, in order, and refuses those past 10 unanswered", async () => {
    const l = heldListings();
    const { socket } = connection({ membership: l.membership, ctx: { listings: new Limiter(16) } });
    await authed(socket);
    for (let id = 2; id <= 13; id++) socket.frame({ id, listConversations: {} });
    // Two refused at once; of the ten taken, one is being answered.
    await until(() => socket.sent.length === 3);
    expect(socket.sent.slice(1).map((f) => [f.replyTo, kinds({ sent: [f] } as FakeSocket)[0]])).toEqual([
      [12, "RATE_LIMITED"],
      [13, "RATE_LIMITED"],
    ]);
    expect(l.calls()).toBe(1);
    for (let answered = 1; answered <= 10; answered++) {
      await until(() => l.held.length === answered);
      l.held[answered - 1]!();
    }
    await until(() => socket.sent.length === 13);
    expect(socket.sent.slice(3).map((f) => f.replyTo)).toEqual([2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    expect(kinds(socket).slice(3)).toEqual(Array(10).fill("conversations"));
  });

  it("counts a listing by the entries it returned, waits up to 2 s for its user's budget, and refuses a longer wait", async () => {
    const waits: number[] = [];
    const charged: number[] = [];
    let listed = 0;
    const { socket } = connection({
      ctx: {
        backends: {
          inbox: { head: async () => 0 },
          membership: {
            conversationsOf: async () => {
              listed++;
              return ["a", "b", "c"].map((id) => ({
                id: `g:${id}`,
                kind: "group",
                name: id,
                createdAtMs: 0,
                version: 1,
              }));
            },
            members: async () => ["alice", "bob", "carol", "dave"],
          },
          messages: { lastSeq: async () => 0 },
          receipts: { get: async () => 0 },
        },
        conversations: {
          memberAccess: async (_user: string, id: string) => ({ record: { id }, role: "member" }),
          roster: async () => ({
            members: ["alice", "bob"].map((userId) => ({ userId, role: "member" })),
            more: false,
          }),
        },
        listings: new Limiter(16),
        takeUserListing: () => waits.shift() ?? 0,
        chargeUserListing: (_user: string, entries: number) => charged.push(entries),
      },
    });
    await authed(socket);
    const answered = answerer(socket);
    expect((await answered(2, { listConversations: { limit: 50 } })).kind.case).toBe("conversations");
    expect((await answered(3, { listMembers: { conversationId: "g:1" } })).kind.case).toBe("members");
    expect((await answered(4, { listReceipts: { conversationId: "g:1" } })).kind.case).toBe("receipts");
    // Three conversations, two members, four watermarks: each less the one entry taken before.
    expect(charged).toEqual([2, 1, 3]);
    // Over the budget for 300 ms: the listing waits, then is answered.
    waits.push(300, 0);
    const started = Date.now();
    expect((await answered(5, { listConversations: {} })).kind.case).toBe("conversations");
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    // Over it for longer than 2 s: refused at once with the wait, and nothing is read.
    waits.push(5_000);
    expect((await answered(6, { listConversations: {} })).kind.value).toMatchObject({
      reason: "RATE_LIMITED",
      code: Code.RESOURCE_EXHAUSTED,
      retryAfterMs: 5_000,
    });
    expect(listed).toBe(2);
    expect(charged).toEqual([2, 1, 3, 2]);
  });

  it("counts a sync or history page by its bodies' bytes, waits up to 2 s for its user's budget, and refuses a longer wait", async () => {
    const inbox = slowInbox();
    for (let cursor = 1; cursor <= 3; cursor++) inbox.add(cursor); // bodies "hello 1".."hello 3": 7 bytes
    const waits: number[] = [];
    const charged: number[] = [];
    let historyReads = 0;
    const { socket } = connection({
      ...inbox.setup,
      messages: {
        ...inbox.setup.messages,
        history: async () => {
          historyReads++;
          const message: StoredMessage = {
            conversationId: "dm:alice~bob",
            seq: 1,
            messageId: "1001",
            sender: "bob",
            clientMsgId: "c1",
            body: "\u00e9t\u00e9",
            createdAtMs: 1,
          };
          return { messages: [message], hasMore: false };
        },
      },
      membership: { isMember: async () => true },
      ctx: {
        takeUserRead: () => waits.shift() ?? 0,
        chargeUserRead: (_user: string, bytes: number) => charged.push(bytes),
      },
    });
    await authed(socket);
    const answered = answerer(socket);
    expect((await answered(2, { sync: { cursor: "0", limit: 2 } })).kind.case).toBe("sync");
    expect((await answered(3, { history: { conversationId: "dm:alice~bob" } })).kind.case).toBe("history");
    // Two bodies of 7 bytes, then one of 5 ("été" in UTF-8): each less the one byte taken before.
    expect(charged).toEqual([13, 4]);
    // Over the budget for 300 ms: the page waits, then is answered.
    waits.push(300, 0);
    const started = Date.now();
    expect((await answered(4, { sync: { cursor: "2" } })).kind.case).toBe("sync");
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(charged).toEqual([13, 4, 6]);
    // Over it for longer than 2 s: refused at once with the wait, and nothing is read or charged.
    waits.push(5_000);
    expect((await answered(5, { history: { conversationId: "dm:alice~bob" } })).kind.value).toMatchObject({
      reason: "RATE_LIMITED",
      code: Code.RESOURCE_EXHAUSTED,
      retryAfterMs: 5_000,
    });
    waits.push(5_000);
    expect((await answered(6, { sync: { cursor: "3" } })).kind.value).toMatchObject({
      reason: "RATE_LIMITED",
    });
    expect(historyReads).toBe(1);
    expect(charged).toEqual([13, 4, 6]);
  });

  it("answers at most the gateway's bound of listings at once, whichever connections ask", async () => {
    const l = heldListings();
    const listings = new Limiter(1);
    const [a, b] = [
      connection({ membership: l.membership, ctx: { listings } }),
      connection({ membership: l.membership, ctx: { listings } }),
    ];
    await authed(a.socket);
    await authed(b.socket);
    a.socket.frame({ id: 2, listConversations: {} });
    b.socket.frame({ id: 2, listConversations: {} });
    await until(() => l.held.length === 1);
    await new Promise((r) => setTimeout(r, 20));
    expect(l.calls()).toBe(1); // the other connection's waits for the place
    l.held[0]!();
    await until(() => l.held.length === 2);
    l.held[1]!();
    await until(() => a.socket.sent.length === 2 && b.socket.sent.length === 2);
  });
});
