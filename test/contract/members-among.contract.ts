/** Backend contract, part: which of many users are members of one conversation (membersAmong). */
import { describe, expect, it } from "vitest";
import type { NewConversation } from "../../internal/backends/types.js";
import type { ContractKit } from "./harness.js";

export function membersAmongContract({ setup }: ContractKit): void {
  describe("membership: membersAmong", () => {
    const group = (id: string, owner: string): NewConversation => ({
      id,
      kind: "group",
      name: `name of ${id}`,
      owner,
      open: true,
      createdAtMs: 1000,
    });

    it("answers those of the users who are members, however many are asked, and none of an unknown conversation", async (ctx) => {
      const h = await setup(ctx);
      const id = h.id("g");
      const u = (i: number) => h.id(`u${i}`);
      // 250 members, every other user: asked in one call, the answer spans several IN reads.
      const members = Array.from({ length: 250 }, (_, i) => u(2 * i));
      await h.b.membership.createConversation(group(id, u(0)), members);
      const asked = Array.from({ length: 500 }, (_, i) => u(i));
      const present = await h.b.membership.membersAmong(id, asked);
      expect([...present].sort()).toEqual([...members].sort());
      // Duplicates and strangers are no trouble; nobody asked is nobody answered.
      expect([...(await h.b.membership.membersAmong(id, [u(1), u(2), u(2), h.id("x")]))]).toEqual([u(2)]);
      expect((await h.b.membership.membersAmong(id, [])).size).toBe(0);
      expect((await h.b.membership.membersAmong(h.id("nope"), [u(0), u(2)])).size).toBe(0);
    });

    it("no longer answers a member who was removed", async (ctx) => {
      const h = await setup(ctx);
      const [id, a, b, c] = [h.id("g"), h.id("a"), h.id("b"), h.id("c")];
      await h.b.membership.createConversation(group(id, a), [a, b, c]);
      await h.b.membership.removeMember(id, b);
      expect([...(await h.b.membership.membersAmong(id, [a, b, c]))].sort()).toEqual([a, c].sort());
      expect([...(await h.b.membership.membersAmong(id, [b]))]).toEqual([]);
      expect([...(await h.b.membership.membersAmong(id, [c]))]).toEqual([c]);
    });
  });
}
