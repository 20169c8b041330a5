/** Backend contract, part: Conversations and their members. */
import { describe, expect, it } from "vitest";
import type { NewConversation } from "../../internal/backends/types.js";
import { Code } from "../../internal/lib/errors.js";
import { type ContractKit, nextMessageId, range, rejection } from "./harness.js";

export function membershipContract({ setup }: ContractKit): void {
  // -------------------------------------------------------------------------------------------
  describe("membership", () => {
    const record = (
      id: string,
      owner: string,
      createdAtMs = 1000,
    ): NewConversation & Pick<Required<NewConversation>, "postPolicy" | "addPolicy" | "delivery"> => ({
      id,
      kind: "group",
      name: `name of ${id}`,
      owner,
      open: true,
      createdAtMs,
      postPolicy: "everyone",
      addPolicy: "everyone",
      delivery: "push",
    });

    it("createConversation is idempotent: a second create returns created=false and the original", async (ctx) => {
      const h = await setup(ctx);
      const [id, a, b, c] = [h.id("g"), h.id("a"), h.id("b"), h.id("c")];
      expect(await h.b.membership.getConversation(id)).toBeUndefined();
      const first = await h.b.membership.createConversation(record(id, a), [a, b, a]);
      expect(first).toEqual({ created: true, record: { ...record(id, a), memberCount: 2, version: 1 } });

      const second = await h.b.membership.createConversation(
        { ...record(id, c, 2000), kind: "direct", name: "other", open: false },
        [c],
      );
      expect(second).toEqual({ created: false, record: first.record });
      expect(await h.b.membership.getConversation(id)).toEqual(first.record);
      expect((await h.b.membership.members(id)).sort()).toEqual([a, b].sort());
      expect(await h.b.membership.isMember(id, c)).toBe(false);
      expect(await h.b.membership.conversationsOf(c, 10)).toEqual([]);
    });

    it("updateGroup renames and opens or closes a group, keeps its members, and refuses what is no group", async (ctx) => {
      const h = await setup(ctx);
      const [id, a, b] = [h.id("g"), h.id("a"), h.id("b")];
      const { record: created } = await h.b.membership.createConversation(record(id, a), [a, b]);
      const renamed = await h.b.membership.updateGroup(id, { name: "renamed" });
      expect(renamed).toEqual({ ...created, name: "renamed", version: 2 });
      const closed = await h.b.membership.updateGroup(id, { open: false });
      expect(closed).toEqual({ ...created, name: "renamed", open: false, version: 3 });
      expect(await h.b.membership.getConversation(id)).toEqual(closed);
      expect((await h.b.membership.members(id)).sort()).toEqual([a, b].sort());
      await expect(h.b.membership.updateGroup(h.id("nope"), { name: "x" })).rejects.toMatchObject({
        reason: "GROUP_NOT_FOUND",
      });
      const dm = h.id("dm");
      await h.b.membership.createConversation({ ...record(dm, ""), kind: "direct", name: "" }, [a, b]);
      await expect(h.b.membership.updateGroup(dm, { name: "x" })).rejects.toMatchObject({
        reason: "GROUP_NOT_FOUND",
      });
    });

    it("group policies: default to everyone, are stored as created and changed by updateGroup", async (ctx) => {
      const h = await setup(ctx);
      const [plain, announce, dm, a, b] = [h.id("g1"), h.id("g2"), h.id("dm"), h.id("a"), h.id("b")];
      const { postPolicy: _p, addPolicy: _a, ...bare } = record(plain, a);
      const created = await h.b.membership.createConversation(bare, [a, b]);
      expect(created.record).toMatchObject({ postPolicy: "everyone", addPolicy: "everyone" });
      const channel = await h.b.membership.createConversation(
        { ...record(announce, a), postPolicy: "admins" },
        [a],
      );
      expect(channel.record).toEqual({
        ...record(announce, a),
        postPolicy: "admins",
        memberCount: 1,
        version: 1,
      });
      expect(await h.b.membership.getConversation(announce)).toEqual(channel.record);

      const changed = await h.b.membership.updateGroup(plain, { addPolicy: "admins" });
      expect(changed).toEqual({ ...created.record, addPolicy: "admins", version: 2 });
      const reopened = await h.b.membership.updateGroup(plain, {
        postPolicy: "admins",
        addPolicy: "everyone",
      });
      expect(reopened).toEqual({ ...created.record, postPolicy: "admins", version: 3 });
      expect(await h.b.membership.getConversation(plain)).toEqual(reopened);
      expect((await h.b.membership.memberOf(plain, b))?.record).toEqual(reopened);

      await h.b.membership.createConversation({ ...bare, id: dm, kind: "direct", name: "", owner: "" }, [
        a,
        b,
      ]);
      expect(await h.b.membership.getConversation(dm)).toMatchObject({
        postPolicy: "everyone",
        addPolicy: "everyone",
      });
    });

    it("delivery: a group that grows past pullAbove switches to pull in the same change, and stays there", async (ctx) => {
      const h = await setup(ctx);
      const [id, big] = [h.id("g"), h.id("big")];
      const u = (i: number) => h.id(`u${i}`);
      await h.b.membership.createConversation(record(id, u(0)), [u(0), u(1)]);
      // Up to the threshold: still push.
      expect(await h.b.membership.addMembers(id, [u(2), u(3)], 100, 4)).toMatchObject({
        memberCount: 4,
        delivery: "push",
      });
      expect(await h.b.membership.addMembers(id, [u(3)], 100, 4)).toMatchObject({ delivery: "push" });
      // Past it: pull, stored with the members that made it grow.
      expect(await h.b.membership.addMembers(id, [u(4)], 100, 4)).toMatchObject({
        memberCount: 5,
        delivery: "pull",
      });
      expect(await h.b.membership.getConversation(id)).toMatchObject({ memberCount: 5, delivery: "pull" });
      expect((await h.b.membership.memberOf(id, u(4)))?.record.delivery).toBe("pull");
      // Never back: shrinking, or adding without a threshold, keeps pull.
      await h.b.membership.removeMember(id, u(4));
      await h.b.membership.removeMember(id, u(3));
      expect(await h.b.membership.addMembers(id, [u(5)], 100)).toMatchObject({
        memberCount: 4,
        delivery: "pull",
      });
      expect((await h.b.membership.conversationsOf(u(5), 10))[0]?.delivery).toBe("pull");
      // Created large: pull from the start.
      const created = await h.b.membership.createConversation({ ...record(big, u(0)), delivery: "pull" }, [
        u(0),
      ]);
      expect(created.record.delivery).toBe("pull");
      expect(await h.b.membership.getConversation(big)).toEqual(created.record);
    });

    it("roles: the record's owner, admins set by setRole, everyone else a member; a role goes with its member", async (ctx) => {
      const h = await setup(ctx);
      const [id, a, b, c, d] = [h.id("g"), h.id("a"), h.id("b"), h.id("c"), h.id("d")];
      await h.b.membership.createConversation(record(id, a), [a, b, c]);
      expect((await h.b.membership.roster(id, { limit: 10 })).members).toEqual(
        [
          { userId: a, role: "owner" },
          { userId: b, role: "member" },
          { userId: c, role: "member" },
        ].sort((x, y) => (x.userId < y.userId ? -1 : 1)),
      );
      expect(await h.b.membership.memberOf(id, a)).toEqual({
        record: { ...record(id, a), memberCount: 3, version: 1 },
        role: "owner",
      });
      expect(await h.b.membership.memberOf(id, d)).toBeUndefined();
      expect(await h.b.membership.memberOf(h.id("nothing"), a)).toBeUndefined();

      expect(await h.b.membership.setRole(id, b, "admin")).toMatchObject({
        owner: a,
        memberCount: 3,
        version: 2,
      });
      expect((await h.b.membership.memberOf(id, b))?.role).toBe("admin");
      expect(await rejection(h.b.membership.setRole(id, d, "admin"))).toMatchObject({
        reason: "USER_NOT_MEMBER",
      });
      expect((await h.b.membership.roster(id, { limit: 10 })).members).not.toContainEqual({
        userId: d,
        role: "admin",
      });

      // Handing over: c becomes the owner, the former owner an admin, in one change.
      expect(await h.b.membership.setRole(id, c, "owner")).toMatchObject({ owner: c, version: 3 });
      const roles = new Map(
        (await h.b.membership.roster(id, { limit: 10 })).members.map((m) => [m.userId, m.role]),
      );
      expect(Object.fromEntries(roles)).toEqual({ [a]: "admin", [b]: "admin", [c]: "owner" });
      expect((await h.b.membership.getConversation(id))?.owner).toBe(c);

      // Demoting, and a removed member's role is gone when it comes back.
      await h.b.membership.setRole(id, a, "member");
      expect((await h.b.membership.memberOf(id, a))?.role).toBe("member");
      await h.b.membership.removeMember(id, b);
      await h.b.membership.addMembers(id, [b], 10);
      expect((await h.b.membership.memberOf(id, b))?.role).toBe("member");

      // The owner removed: the group has none, and the user returns as a member.
      expect(await h.b.membership.removeMember(id, c)).toMatchObject({ owner: "", memberCount: 2 });
      expect((await h.b.membership.getConversation(id))?.owner).toBe("");
      await h.b.membership.addMembers(id, [c], 10);
      expect((await h.b.membership.memberOf(id, c))?.role).toBe("member");
      // Giving the owner another role leaves the group without one.
      await h.b.membership.setRole(id, b, "owner");
      expect(await h.b.membership.setRole(id, b, "admin")).toMatchObject({ owner: "" });
      expect((await h.b.membership.memberOf(id, b))?.role).toBe("admin");
      expect((await h.b.membership.getConversation(id))?.memberCount).toBe(3);
      expect(await h.b.membership.members(id)).toHaveLength(3);
    });

    it("version: 1 at creation, one more with every stored change, and what a change returns is what is stored", async (ctx) => {
      const h = await setup(ctx);
      const [id, a, b, c] = [h.id("g"), h.id("a"), h.id("b"), h.id("c")];
      const m = h.b.membership;
      const { record: created } = await m.createConversation(record(id, a), [a, b]);
      const changes = [
        () => m.updateGroup(id, { name: "renamed" }),
        () => m.addMembers(id, [c], 10),
        () => m.setRole(id, b, "admin"),
        () => m.setRole(id, c, "owner"),
        () => m.removeMember(id, b),
        () => m.updateGroup(id, { postPolicy: "admins" }),
      ];
      const versions = [created.version];
      for (const change of changes) {
        const after = await change();
        expect(await m.getConversation(id)).toEqual(after);
        versions.push(after.version);
      }
      expect(versions).toEqual([1, 2, 3, 4, 5, 6, 7]);
      // What stores nothing adds nothing: present users added, a refused change.
      expect((await m.addMembers(id, [a, c], 10)).version).toBe(7);
      await rejection(m.removeMember(id, b));
      expect((await m.getConversation(id))?.version).toBe(7);
      // Concurrent changes of one group each get a version of their own, and none undoes another.
      const concurrent = await Promise.all([
        m.updateGroup(id, { name: "again" }),
        m.updateGroup(id, { open: false }),
        m.updateGroup(id, { addPolicy: "admins" }),
        m.addMembers(id, [h.id("d")], 10),
      ]);
      expect(concurrent.map((r) => r.version).sort((x, y) => x - y)).toEqual([8, 9, 10, 11]);
      expect(await m.getConversation(id)).toMatchObject({
        name: "again",
        open: false,
        addPolicy: "admins",
        postPolicy: "admins",
        memberCount: 3,
        version: 11,
      });
    });

    it("concurrent creates of one id: exactly one is created, all return the same record", async (ctx) => {
      const h = await setup(ctx);
      const id = h.id("g");
      const results = await Promise.all(
        range(1, 8).map((i) => h.b.membership.createConversation(record(id, h.id(`o${i}`)), [h.id(`o${i}`)])),
      );
      expect(results.filter((r) => r.created)).toHaveLength(1);
      const winner = results.find((r) => r.created)!.record;
      for (const r of results) expect(r.record).toEqual(winner);
      expect(await h.b.membership.members(id)).toEqual([winner.owner]);
    });

    it("addMembers enforces membersMax (reason GROUP_FULL), ignores present users, refuses all-or-nothing", async (ctx) => {
      const h = await setup(ctx);
      const id = h.id("g");
      const u = (n: string) => h.id(n);
      await h.b.membership.createConversation(record(id, u("a")), [u("a"), u("b"), u("c")]);

      const added = await h.b.membership.addMembers(id, [u("d"), u("b"), u("d")], 5);
      expect(added).toEqual({ ...record(id, u("a")), memberCount: 4, version: 2 });
      // Two fresh users, one slot: refused as a whole.
      const full = await rejection(h.b.membership.addMembers(id, [u("e"), u("f")], 5));
      expect(full).toMatchObject({ reason: "GROUP_FULL" });
      expect(await h.b.membership.isMember(id, u("e"))).toBe(false);
      expect(await h.b.membership.isMember(id, u("f"))).toBe(false);
      expect((await h.b.membership.getConversation(id))?.memberCount).toBe(4);

      expect((await h.b.membership.addMembers(id, [u("e"), u("a")], 5)).memberCount).toBe(5);
      // At the limit, re-adding present users is not growth.
      expect((await h.b.membership.addMembers(id, [u("a"), u("b"), u("e")], 5)).memberCount).toBe(5);
      expect(await rejection(h.b.membership.addMembers(id, [u("a"), u("g")], 5))).toMatchObject({
        reason: "GROUP_FULL",
      });
      expect((await h.b.membership.members(id)).sort()).toEqual(["a", "b", "c", "d", "e"].map(u).sort());
      expect((await h.b.membership.getConversation(id))?.memberCount).toBe(5);
      // Growing the limit lets them in.
      expect((await h.b.membership.addMembers(id, [u("g")], 6)).memberCount).toBe(6);
      expect(await h.b.membership.isMember(id, u("g"))).toBe(true);
    });

    it("concurrent addMembers never exceed membersMax", async (ctx) => {
      const h = await setup(ctx);
      const id = h.id("g");
      await h.b.membership.createConversation(record(id, h.id("owner")), [h.id("owner")]);
      const settled = await Promise.allSettled(
        range(1, 20).map((i) => h.b.membership.addMembers(id, [h.id(`u${i}`)], 10)),
      );
      const refused = settled.filter((s) => s.status === "rejected");
      expect(settled.length - refused.length).toBe(9);
      for (const r of refused) expect(r.reason).toMatchObject({ reason: "GROUP_FULL" });
      expect((await h.b.membership.getConversation(id))?.memberCount).toBe(10);
      expect(await h.b.membership.members(id)).toHaveLength(10);
    });

    it("removeMember, isMember and members", async (ctx) => {
      const h = await setup(ctx);
      const id = h.id("g");
      const users = ["a", "b", "c", "b0"].map((n) => h.id(n));
      await h.b.membership.createConversation(record(id, users[0]!), users);
      // A neighbouring conversation whose id extends this one must not leak into members().
      await h.b.membership.createConversation(record(h.id("g0"), h.id("z")), [h.id("z")]);
      expect((await h.b.membership.members(id)).sort()).toEqual([...users].sort());

      const after = await h.b.membership.removeMember(id, users[1]!);
      expect(after.memberCount).toBe(3);
      expect(await h.b.membership.isMember(id, users[1]!)).toBe(false);
      expect(await h.b.membership.isMember(id, users[3]!)).toBe(true);
      expect((await h.b.membership.members(id)).sort()).toEqual([users[0]!, users[2]!, users[3]!].sort());
      expect(await h.b.membership.conversationsOf(users[1]!, 10)).toEqual([]);
      expect(await h.b.membership.getConversation(id)).toEqual(after);

      // Removing someone who is not a member is refused as the protocol documents (NOT_MEMBER is
      // PERMISSION_DENIED, docs/protocol.md §6) and never corrupts the count.
      expect(await rejection(h.b.membership.removeMember(id, users[1]!))).toMatchObject({
        code: Code.PERMISSION_DENIED,
        reason: "NOT_MEMBER",
      });
      expect((await h.b.membership.getConversation(id))?.memberCount).toBe(3);
      expect(await h.b.membership.isMember(h.id("nothing"), users[0]!)).toBe(false);
      // Re-adding after removal counts again, and a list read before the change is not served after it.
      expect((await h.b.membership.addMembers(id, [users[1]!], 10)).memberCount).toBe(4);
      const listed = await h.b.membership.members(id);
      expect([...listed].sort()).toEqual([...users].sort());
      // A caller may change the list it got (sort, splice) without changing what the next one reads.
      listed.splice(0, listed.length, "intruder");
      expect((await h.b.membership.members(id)).sort()).toEqual([...users].sort());
      await h.b.membership.removeMember(id, users[0]!);
      expect((await h.b.membership.members(id)).sort()).toEqual(users.slice(1).sort());
      expect(await h.b.membership.roster(id, { limit: 10 })).toEqual({
        members: users
          .slice(1)
          .sort()
          .map((userId) => ({ userId, role: "member" })),
        more: false,
      });
    });

    it("roster reads a page: sorted by user id, after a user id, at most `limit`, and whether more follow", async (ctx) => {
      const h = await setup(ctx);
      const id = h.id("g");
      const owner = h.id("m");
      const others = range(0, 5).map((i) => h.id(`m${i}`));
      await h.b.membership.createConversation(record(id, owner), [owner, ...others]);
      await h.b.membership.setRole(id, others[2]!, "admin");
      const all = [owner, ...others].sort();
      const role = (u: string) => (u === owner ? "owner" : u === others[2] ? "admin" : "member");
      const entries = (users: string[]) => users.map((userId) => ({ userId, role: role(userId) }));

      expect(await h.b.membership.roster(id, { limit: 3 })).toEqual({
        members: entries(all.slice(0, 3)),
        more: true,
      });
      expect(await h.b.membership.roster(id, { after: all[2]!, limit: 3 })).toEqual({
        members: entries(all.slice(3, 6)),
        more: true,
      });
      // The last page exactly full: nothing more.
      expect(await h.b.membership.roster(id, { after: all[3]!, limit: 3 })).toEqual({
        members: entries(all.slice(4)),
        more: false,
      });
      expect(await h.b.membership.roster(id, { after: all[6]!, limit: 3 })).toEqual({
        members: [],
        more: false,
      });
      // After a user id that is no member (one removed since the page before): those sorting after it.
      await h.b.membership.removeMember(id, all[3]!);
      expect(await h.b.membership.roster(id, { after: all[3]!, limit: 2 })).toEqual({
        members: entries(all.slice(4, 6)),
        more: true,
      });
      expect(await h.b.membership.roster(h.id("nothing"), { limit: 3 })).toEqual({
        members: [],
        more: false,
      });
    });

    it("conversationsOf lists a user's conversations newest first, at most `limit`, with current counts", async (ctx) => {
      const h = await setup(ctx);
      const [me, other] = [h.id("me"), h.id("me0")];
      const ids = range(1, 6).map((i) => h.id(`conv${i}`));
      // Created out of order; createdAtMs decides.
      const created = [3, 1, 6, 2, 5, 4];
      for (const i of created)
        await h.b.membership.createConversation(record(ids[i - 1]!, other, 1000 * i), [other]);
      for (const i of created) await h.b.membership.addMembers(ids[i - 1]!, [me], 100);
      // Newer, but only the neighbouring user (whose id extends mine) is in it.
      await h.b.membership.createConversation(record(h.id("conv7"), other, 7000), [other]);

      const newestFirst = [6, 5, 4, 3, 2, 1].map((i) => ({
        ...record(ids[i - 1]!, other, 1000 * i),
        memberCount: 2,
        version: 2,
      }));
      expect(await h.b.membership.conversationsOf(me, 3)).toEqual(newestFirst.slice(0, 3));
      expect(await h.b.membership.conversationsOf(me, 100)).toEqual(newestFirst);
      await h.b.membership.removeMember(ids[4]!, me);
      expect(await h.b.membership.conversationsOf(me, 2)).toEqual([newestFirst[0], newestFirst[2]]);
      expect(await h.b.membership.conversationsOf(h.id("nobody"), 10)).toEqual([]);
    });

    it("handles ids in the platform's whole alphabet, at either end of the key range", async (ctx) => {
      const h = await setup(ctx);
      // User ids are /^[A-Za-z0-9._@:+-]{1,128}$/ (internal/lib/auth.ts): start with each kind.
      const users = [".", "-", "+", ":", "@", "_", "0", "9", "A", "Z", "a", "z"].map((c) => `${c}${h.ns}`);
      users.push(`${h.ns}${"z".repeat(128 - h.ns.length)}`);
      const group = `g:${nextMessageId()}`;
      const direct = `dm:${users[0]}~${users[1]}`;
      await h.b.membership.createConversation(record(group, users[0]!, 1), users);
      await h.b.membership.createConversation({ ...record(direct, users[0]!, 2), kind: "direct" }, [
        users[0]!,
        users[1]!,
      ]);
      expect((await h.b.membership.members(group)).sort()).toEqual([...users].sort());
      expect((await h.b.membership.members(direct)).sort()).toEqual([users[0], users[1]].sort());
      for (const user of users) expect(await h.b.membership.isMember(group, user)).toBe(true);
      expect((await h.b.membership.conversationsOf(users[0]!, 10)).map((c) => c.id)).toEqual([direct, group]);
      expect((await h.b.membership.conversationsOf(users.at(-1)!, 10)).map((c) => c.id)).toEqual([group]);
    });
  });
}
