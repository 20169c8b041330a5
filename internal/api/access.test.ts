import { describe, expect, it } from "vitest";
import type { MembershipStore } from "../backends/types.js";
import type { ClientGrant, Permission } from "../grpc-auth/policy.js";
import { accessOf } from "./access.js";

/** A policy of one client, `narrow`, sending as bot:narrow, with the given conversations grant. */
function accessWith(conversations: ClientGrant["conversations"], members: Record<string, string[]> = {}) {
  const grant: ClientGrant = {
    permissions: new Set<Permission>(),
    sendAs: new Set(["bot:narrow"]),
    conversations,
  };
  const membership = {
    isMember: async (id: string, user: string) => members[id]?.includes(user) ?? false,
  } as unknown as MembershipStore;
  return accessOf("client:narrow", { clients: new Map([["narrow", grant]]) }, membership);
}

describe("server-API conversation access", () => {
  it("makes a client's own direct conversations its own under every grant, and nobody else's", async () => {
    const own = "dm:bot:narrow~dmz1";
    const others = "dm:alice~bob";
    for (const grant of [new Set(["g:1"]), "member" as const]) {
      const access = accessWith(grant, { "g:1": ["bot:narrow"] });
      expect(await access.sees(own)).toBe(true);
      await expect(access.conversation(own)).resolves.toBeUndefined();
      expect(await access.sees(others)).toBe(false);
      await expect(access.conversation(others)).rejects.toMatchObject({ reason: "CONVERSATION_NOT_ALLOWED" });
      expect(await access.sees("g:1")).toBe(true);
      expect(await access.sees("g:2")).toBe(false);
    }
  });

  it("lets a list of ids name another pair's direct conversation, and `all` see everything", async () => {
    expect(await accessWith(new Set(["dm:alice~bob"])).sees("dm:alice~bob")).toBe(true);
    expect(await accessWith("all").sees("dm:alice~bob")).toBe(true);
  });

  it("lets a client create only groups it may touch afterwards", async () => {
    const refused = { reason: "CONVERSATION_NOT_ALLOWED" };
    const member = accessWith("member");
    expect(() => member.creates(undefined, "alice", ["bob"])).toThrow(expect.objectContaining(refused));
    expect(() => member.creates(undefined, "bot:narrow", ["bob"])).not.toThrow();
    expect(() => member.creates("g:7", "alice", ["bob", "bot:narrow"])).not.toThrow();
    const listed = accessWith(new Set(["g:7"]));
    expect(() => listed.creates("g:7", "alice", [])).not.toThrow();
    expect(() => listed.creates("g:8", "bot:narrow", [])).toThrow(expect.objectContaining(refused));
    expect(() => listed.creates(undefined, "bot:narrow", [])).toThrow(expect.objectContaining(refused));
    expect(() => accessWith("all").creates(undefined, "alice", [])).not.toThrow();
  });
});
