import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { StoredMessage } from "../backends/types.js";
import type { Conversations } from "../conversations/index.js";
import type { Policy } from "../grpc-auth/policy.js";
import { Code, SwitchboardError } from "../lib/errors.js";
import type { CallContext } from "../lib/rpc.js";
import { type ChatServiceDeps, CLOSE_REASON_BYTES_MAX, chatServiceImpl } from "./chat-service.js";

const ctx = { signal: new AbortController().signal, peer: "in-process" } as CallContext;

/** The service over `conversations` (only what a test calls is there), unguarded (no principal). */
function service(conversations: Partial<Conversations>) {
  return chatServiceImpl({
    conversations: conversations as Conversations,
    policy: () => ({ clients: new Map() }) as unknown as Policy,
  } as unknown as ChatServiceDeps);
}

const storedTo = (userId: string, body: string): StoredMessage => ({
  conversationId: `dm:${userId}~system`,
  seq: 1,
  messageId: "1001",
  sender: "system",
  clientMsgId: "k",
  body,
  createdAtMs: 1,
});

describe("Broadcast", () => {
  it("keeps at most 16 sends in flight for every call together, and about a MiB of bodies per call", async () => {
    let inFlight = 0;
    let most = 0;
    const impl = service({
      send: async (input) => {
        most = Math.max(most, ++inFlight);
        await new Promise((resolve) => setTimeout(resolve, 2));
        inFlight--;
        return { message: storedTo(input.toUser!, input.body), duplicate: false };
      },
    });
    const users = (call: string) => Array.from({ length: 100 }, (_, i) => `${call}${i}`);
    const broadcast = (call: string, body: string) =>
      impl.broadcast({ userIds: users(call), sender: "", idempotencyKey: call, body } as never, ctx);
    // Three calls side by side take turns: the process's load is one call's.
    const calls = await Promise.all(["a", "b", "c"].map((call) => broadcast(call, "hi")));
    for (const { results } of calls) expect(results?.filter((r) => r.message)).toHaveLength(100);
    expect(most).toBe(16);
    // Bodies of 300,000 characters: three at a time (1 MiB), not sixteen.
    most = 0;
    const { results } = await broadcast("d", "x".repeat(300_000));
    expect(results?.filter((r) => r.message)).toHaveLength(100);
    expect(most).toBe(3);
  });

  it("stops sending once the call has failed", async () => {
    const sentTo: string[] = [];
    let failedAt: number | undefined;
    const users = Array.from({ length: 200 }, (_, i) => `u${i}`);
    const impl = service({
      send: async (input) => {
        sentTo.push(input.toUser!);
        await new Promise((resolve) => setTimeout(resolve, 1));
        if (input.toUser === "u20") {
          failedAt = sentTo.length;
          throw new SwitchboardError(Code.INVALID_ARGUMENT, "INVALID_SENDER", "not a direct sender");
        }
        return { message: storedTo(input.toUser!, input.body), duplicate: false };
      },
    });
    await expect(
      impl.broadcast({ userIds: users, sender: "", idempotencyKey: "k", body: "b" } as never, ctx),
    ).rejects.toMatchObject({ code: Code.INVALID_ARGUMENT, reason: "INVALID_SENDER" });
    // Sends that had started when it failed may finish; none may start after.
    const atFailure = sentTo.length;
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(sentTo.length).toBe(atFailure);
    expect(sentTo.length).toBeLessThan(failedAt! + 16);
  });

  it("answers a storage error for one recipient in that recipient's result, and the others' messages", async () => {
    const impl = service({
      send: async (input) => {
        if (input.toUser === "b") throw new SwitchboardError(Code.INTERNAL, "STORAGE_ERROR", "refused");
        if (input.toUser === "c")
          throw new SwitchboardError(Code.UNAVAILABLE, "STORAGE_UNAVAILABLE", "no replicas");
        // A peer (the id service) refusing the router's own credential: not the caller's doing.
        if (input.toUser === "e")
          throw new SwitchboardError(Code.PERMISSION_DENIED, "METHOD_NOT_ALLOWED", "role:router may not");
        return { message: storedTo(input.toUser!, input.body), duplicate: false };
      },
    });
    const { results } = await impl.broadcast(
      { userIds: ["a", "b", "c", "d", "e"], sender: "", idempotencyKey: "k", body: "x" } as never,
      ctx,
    );
    expect(results?.map((r) => [r.userId, r.message?.conversationId ?? r.reason])).toEqual([
      ["a", "dm:a~system"],
      ["b", "STORAGE_ERROR"],
      ["c", "STORAGE_UNAVAILABLE"],
      ["d", "dm:d~system"],
      ["e", "UNAVAILABLE"],
    ]);
    expect(results?.[4]?.code).toBe(Code.UNAVAILABLE);
    expect(results?.[1]?.code).toBe(Code.INTERNAL);
  });

  it("answers each recipient with the stored message's ids, not another copy of the body", async () => {
    const impl = service({
      send: async (input) => ({ message: storedTo(input.toUser!, input.body), duplicate: false }),
    });
    const { results } = await impl.broadcast(
      { userIds: ["a", "b"], sender: "", idempotencyKey: "k", body: "x".repeat(5_000) } as never,
      ctx,
    );
    expect(results?.map((r) => [r.userId, r.message?.conversationId, r.message?.body])).toEqual([
      ["a", "dm:a~system", ""],
      ["b", "dm:b~system", ""],
    ]);
  });
});

describe("the proto's comments", () => {
  it("give Disconnect's reason the bound the server enforces", () => {
    const proto = readFileSync(
      join(import.meta.dirname, "../../proto/switchboard/api/v1/chat.proto"),
      "utf8",
    );
    const reason = /message DisconnectRequest \{[\s\S]*?\/\/ ([^\n]*)\n\s*string reason = 3;/.exec(
      proto,
    )?.[1];
    expect(reason).toContain(`at most ${CLOSE_REASON_BYTES_MAX} bytes of UTF-8`);
  });
});
