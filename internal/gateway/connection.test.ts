/**
 * A connection's authentication against stand-ins for its socket and services, where the timing
 * between registration and the welcome, and the services' failures, are the test's to choose.
 */
import { EventEmitter } from "node:events";
import { fromJsonString } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { type ServerFrame, ServerFrameSchema } from "../../gen/switchboard/client/v1/client_pb.js";
import type { Identity } from "../lib/auth.js";
import { loadConfig } from "../lib/config.js";
import { errors } from "../lib/errors.js";
import { discardingLogger } from "../lib/log.js";
import { createMetrics } from "../lib/metrics.js";
import { CloseCode } from "./close-codes.js";
import { Connection, type GatewayContext } from "./connection.js";

/** A ws socket as the connection uses it: frames in by "message", frames out recorded. */
class FakeSocket extends EventEmitter {
  readonly sent: ServerFrame[] = [];
  closedWith: number | undefined;
  bufferedAmount = 0;
  send(data: string | Uint8Array): void {
    this.sent.push(fromJsonString(ServerFrameSchema, String(data)));
  }
  close(code: number): void {
    this.closedWith = code;
  }
  frame(json: unknown): void {
    this.emit("message", Buffer.from(JSON.stringify(json)), false);
  }
}

interface Setup {
  verify?: (token: string) => Promise<Identity>;
  head?: (userId: string) => Promise<number>;
  register?: () => Promise<void>;
}

function connection(setup: Setup = {}) {
  const socket = new FakeSocket();
  const ctx = {
    config: loadConfig({}),
    log: discardingLogger(),
    metrics: createMetrics(),
    backends: { inbox: { head: setup.head ?? (async () => 0) } },
    presence: { heartbeat: async () => ({}) },
    verify: setup.verify ?? (async () => ({ userId: "alice", expiresAtMs: Number.POSITIVE_INFINITY })),
    register: setup.register ?? (async () => {}),
    unregister: () => {},
  } as unknown as GatewayContext;
  const conn = new Connection(ctx, socket as never, "session-1", "json");
  return { conn, socket };
}

const until = async (pred: () => boolean) => {
  for (let i = 0; i < 200 && !pred(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(pred()).toBe(true);
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
      register: async () => {
        registered++;
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

  it("refuses a request with a lone surrogate before the welcome as AUTH_REQUIRED, under its id", async () => {
    const { socket } = connection();
    socket.frame({ id: 4, send: { toUser: "bob", clientMsgId: "c-1", body: "\ud800" } });
    await until(() => socket.sent.length === 1);
    expect(kinds(socket)).toEqual(["AUTH_REQUIRED"]);
    expect(socket.sent[0]!.replyTo).toBe(4);
  });
});
