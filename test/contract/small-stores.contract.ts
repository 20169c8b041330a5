/** Backend contract, part: Receipts, routing events, presence, devices, notification settings and push dead letters. */
import { describe, expect, it } from "vitest";
import {
  type DeviceRecord,
  deadLetterId,
  type PushDeadLetter,
  type PushJob,
  parseDeadLetterId,
  type SessionEvent,
} from "../../internal/backends/types.js";
import { type ContractKit, range, shuffled } from "./harness.js";

export function smallStoresContract({ setup, itUnless }: ContractKit): void {
  // -------------------------------------------------------------------------------------------
  describe("receipts", () => {
    it("raise returns true only when the watermark moves up", async (ctx) => {
      const h = await setup(ctx);
      const [c, u, v] = [h.id("c"), h.id("u"), h.id("v")];
      expect(await h.b.receipts.get(c, u, "read")).toBe(0);
      expect(await h.b.receipts.raise(c, u, "read", 5)).toBe(true);
      expect(await h.b.receipts.raise(c, u, "read", 5)).toBe(false);
      expect(await h.b.receipts.raise(c, u, "read", 3)).toBe(false);
      expect(await h.b.receipts.get(c, u, "read")).toBe(5);
      expect(await h.b.receipts.raise(c, u, "read", 6)).toBe(true);
      expect(await h.b.receipts.get(c, u, "read")).toBe(6);
      // Kinds, users and conversations have separate watermarks.
      expect(await h.b.receipts.get(c, u, "delivered")).toBe(0);
      expect(await h.b.receipts.raise(c, u, "delivered", 2)).toBe(true);
      expect(await h.b.receipts.get(c, v, "read")).toBe(0);
      expect(await h.b.receipts.get(h.id("c0"), u, "read")).toBe(0);
      expect(await h.b.receipts.get(c, u, "read")).toBe(6);
    });

    it("concurrent raises: exactly one wins per value, the watermark ends at the maximum", async (ctx) => {
      const h = await setup(ctx);
      const [c, u] = [h.id("c"), h.id("u")];
      const same = await Promise.all(range(1, 10).map(() => h.b.receipts.raise(c, u, "read", 7)));
      expect(same.filter(Boolean)).toHaveLength(1);
      const mixed = await Promise.all(
        shuffled(range(1, 40), 5).map((seq) => h.b.receipts.raise(c, u, "delivered", seq)),
      );
      expect(mixed.filter(Boolean).length).toBeGreaterThanOrEqual(1);
      expect(await h.b.receipts.get(c, u, "delivered")).toBe(40);
      expect(await h.b.receipts.get(c, u, "read")).toBe(7);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe("routing events", () => {
    /** Follows the routing table the way a router does; ignores other namespaces' events. */
    class Table {
      readonly events: SessionEvent[] = [];
      readonly sessions = new Map<string, SessionEvent>();
      constructor(private readonly ns: string) {}
      readonly handler = (received: SessionEvent) => {
        if (!received.gatewayId.startsWith(this.ns)) return;
        // How late a live event came is about its delivery, not the table: kept apart.
        const { lateByMs, ...e } = received;
        if (lateByMs !== undefined) expect(lateByMs).toBeGreaterThanOrEqual(0);
        this.events.push(e);
        if (e.kind === "up") this.sessions.set(e.sessionId, e);
        else if (e.kind === "down") this.sessions.delete(e.sessionId);
        else
          for (const [id, s] of this.sessions)
            if (s.gatewayId === e.gatewayId && s.gatewayEpoch <= e.gatewayEpoch) this.sessions.delete(id);
      };
      ids = () => [...this.sessions.keys()].sort();
    }
    const up = (sessionId: string, gatewayId: string, gatewayEpoch = 1, userId = `user-${sessionId}`) =>
      ({ kind: "up", userId, sessionId, gatewayId, gatewayEpoch }) satisfies SessionEvent;
    const down = (s: SessionEvent): SessionEvent => ({ ...s, kind: "down" });
    const gone = (gatewayId: string, gatewayEpoch: number): SessionEvent => ({
      kind: "gateway-gone",
      userId: "",
      sessionId: "",
      gatewayId,
      gatewayEpoch,
    });

    it("subscribe replays the current up sessions, then follows changes", async (ctx) => {
      const h = await setup(ctx);
      const [g1, g2] = [h.id("gw1"), h.id("gw2")];
      const s = [up(h.id("s1"), g1), up(h.id("s2"), g1), up(h.id("s3"), g2), up(h.id("s4"), g2)];
      for (const e of s) await h.b.routing.publish(e);
      await h.b.routing.publish(down(s[1]!));
      // A session that moved: its latest "up" wins.
      const moved = up(h.id("s4"), g1, 3);
      await h.b.routing.publish(moved);

      const table = new Table(h.ns);
      h.track(await h.b.routing.subscribe(table.handler));
      await h.eventually(() =>
        expect(table.ids()).toEqual([s[0]!.sessionId, s[2]!.sessionId, moved.sessionId].sort()),
      );
      // The replay is the table as "up" events, not the history of changes.
      await h.eventually(() =>
        expect([...table.events].sort((a, b) => (a.sessionId < b.sessionId ? -1 : 1))).toEqual([
          s[0],
          s[2],
          moved,
        ]),
      );

      const s5 = up(h.id("s5"), g2);
      await h.b.routing.publish(s5);
      await h.b.routing.publish(down(s[0]!));
      await h.eventually(() =>
        expect(table.ids()).toEqual([s[2]!.sessionId, moved.sessionId, s5.sessionId].sort()),
      );
      expect(table.events.slice(-2)).toEqual([s5, down(s[0]!)]);
    });

    it('"gateway-gone" with epoch E removes that gateway\'s sessions with epoch <= E only', async (ctx) => {
      const h = await setup(ctx);
      const [g1, g2] = [h.id("gw1"), h.id("gw1x")];
      const sessions = [
        up(h.id("a"), g1, 1),
        up(h.id("b"), g1, 2),
        up(h.id("c"), g1, 3),
        up(h.id("d"), g2, 1),
        up(h.id("e"), g2, 5),
      ];
      for (const e of sessions) await h.b.routing.publish(e);
      const live = new Table(h.ns);
      h.track(await h.b.routing.subscribe(live.handler));
      await h.eventually(() => expect(live.ids()).toHaveLength(5));

      await h.b.routing.publish(gone(g1, 2));
      const expected = [h.id("c"), h.id("d"), h.id("e")].sort();
      await h.eventually(() => expect(live.ids()).toEqual(expected));
      expect(live.events.at(-1)).toEqual(gone(g1, 2));

      // A later subscriber's replay agrees.
      const late = new Table(h.ns);
      h.track(await h.b.routing.subscribe(late.handler));
      await h.eventually(() => expect(late.ids()).toEqual(expected));
      expect(late.events.every((e) => e.kind === "up")).toBe(true);

      // A new incarnation of the gateway registers again; a stale gone does not remove it.
      const fresh = up(h.id("f"), g1, 4);
      await h.b.routing.publish(fresh);
      await h.b.routing.publish(gone(g1, 3));
      const after = [h.id("d"), h.id("e"), h.id("f")].sort();
      await h.eventually(() => expect(live.ids()).toEqual(after));
      const third = new Table(h.ns);
      h.track(await h.b.routing.subscribe(third.handler));
      await h.eventually(() => expect(third.ids()).toEqual(after));
    });

    it("a subscriber of the publishing process has the record by the time publish resolves", async (ctx) => {
      const h = await setup(ctx);
      const table = new Table(h.ns);
      h.track(await h.b.routing.subscribe(table.handler));
      // A router learns of its own gateway's new session at once (not after a round trip through
      // the topic), so an event for a client that just connected reaches it.
      const s1 = up(h.id("s1"), h.id("gw"));
      await h.b.routing.publish(s1);
      expect(table.ids()).toEqual([s1.sessionId]);
      await h.b.routing.publish(down(s1));
      expect(table.ids()).toEqual([]);
      // Heard early, each record is handed out once: the topic's copies, coming back later, must not
      // replay "up" then "down" (the closed session would look up in between). Routing records are
      // read in the order they were written, so once another process's later record has reached the
      // table, the copies of ours came before it.
      const peer = await h.peer();
      const s2 = up(h.id("s2"), h.id("gw2"));
      await peer?.routing.publish(s2);
      if (peer) await h.eventually(() => expect(table.ids()).toEqual([s2.sessionId]));
      expect(table.events).toEqual(peer ? [s1, down(s1), s2] : [s1, down(s1)]);
    });

    it("a closed subscription receives nothing more", async (ctx) => {
      const h = await setup(ctx);
      const g = h.id("gw");
      const closedOne = new Table(h.ns);
      const sub = h.track(await h.b.routing.subscribe(closedOne.handler));
      const open = new Table(h.ns);
      h.track(await h.b.routing.subscribe(open.handler));
      await h.b.routing.publish(up(h.id("s1"), g));
      await h.eventually(() => expect(closedOne.ids()).toEqual([h.id("s1")]));
      await sub.close();
      await h.b.routing.publish(up(h.id("s2"), g));
      await h.eventually(() => expect(open.ids()).toEqual([h.id("s1"), h.id("s2")]));
      expect(closedOne.ids()).toEqual([h.id("s1")]);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe("presence store", () => {
    it("records last-active times and returns only known users", async (ctx) => {
      const h = await setup(ctx);
      const [a, b, c] = [h.id("a"), h.id("b"), h.id("a0")];
      expect(await h.b.presence.lastActive([a, b])).toEqual(new Map());
      await h.b.presence.setLastActive(a, 1_000);
      await h.b.presence.setLastActive(b, 2_000);
      await h.b.presence.setLastActive(a, 3_000);
      expect(await h.b.presence.lastActive([a, b, c])).toEqual(
        new Map([
          [a, 3_000],
          [b, 2_000],
        ]),
      );
      expect(await h.b.presence.lastActive([])).toEqual(new Map());
    });
  });

  // -------------------------------------------------------------------------------------------
  describe("notification settings", () => {
    it("mutes until a time or until unmuted, lists the mutes in force, and keeps one window per user", async (ctx) => {
      const h = await setup(ctx);
      const [u, v, c1, c2, c3] = [h.id("u"), h.id("v"), h.id("c1"), h.id("c2"), h.id("c3")];
      const now = Date.now();
      expect(await h.b.settings.muted(u, now)).toEqual([]);
      expect(await h.b.settings.isMuted(u, c1, now)).toBe(false);
      await h.b.settings.mute(u, { conversationId: c1, untilMs: 0 });
      await h.b.settings.mute(u, { conversationId: c2, untilMs: now + 60_000 });
      await h.b.settings.mute(u, { conversationId: c3, untilMs: now + 1_000 });
      expect(await h.b.settings.isMuted(u, c1, now)).toBe(true);
      expect(await h.b.settings.isMuted(u, c2, now + 59_999)).toBe(true);
      expect(await h.b.settings.isMuted(u, c2, now + 60_000)).toBe(false);
      expect(await h.b.settings.isMuted(v, c1, now)).toBe(false);
      const byId = (list: Array<{ conversationId: string; untilMs: number }>) =>
        Object.fromEntries(list.map((m) => [m.conversationId, m.untilMs]));
      expect(byId(await h.b.settings.muted(u, now))).toEqual({
        [c1]: 0,
        [c2]: now + 60_000,
        [c3]: now + 1_000,
      });
      // At a later time the ended mute is not in force.
      expect(byId(await h.b.settings.muted(u, now + 2_000))).toEqual({ [c1]: 0, [c2]: now + 60_000 });
      // Muting again replaces the end; unmuting removes it (twice is harmless).
      await h.b.settings.mute(u, { conversationId: c2, untilMs: 0 });
      await h.b.settings.unmute(u, c1);
      await h.b.settings.unmute(u, c1);
      expect(byId(await h.b.settings.muted(u, now + 2_000))).toEqual({ [c2]: 0 });

      expect(await h.b.settings.doNotDisturb(u)).toBeUndefined();
      const night = { startMinute: 22 * 60, endMinute: 7 * 60, timeZone: "Europe/Berlin" };
      await h.b.settings.setDoNotDisturb(u, night);
      expect(await h.b.settings.doNotDisturb(u)).toEqual(night);
      await h.b.settings.setDoNotDisturb(u, { startMinute: 0, endMinute: 30, timeZone: "UTC" });
      expect(await h.b.settings.doNotDisturb(u)).toEqual({ startMinute: 0, endMinute: 30, timeZone: "UTC" });
      expect(await h.b.settings.doNotDisturb(v)).toBeUndefined();
      await h.b.settings.setDoNotDisturb(u, undefined);
      expect(await h.b.settings.doNotDisturb(u)).toBeUndefined();
    });
  });

  // -------------------------------------------------------------------------------------------
  describe("push dead letters", () => {
    const job = (id: string, userId: string): PushJob => ({
      id,
      provider: "webhook",
      token: "https://push.example/hook",
      device: null,
      notification: {
        id: `n-${id}`,
        userId,
        conversationId: "g:dead",
        title: "t",
        body: "b",
        ttlSeconds: 60,
        messageCount: 1,
      },
      attempts: 3,
      notBeforeMs: 0,
      createdAtMs: 1_000,
    });

    it("lists newest first with pages, and take removes each dead letter for exactly one caller", async (ctx) => {
      const h = await setup(ctx);
      const u = h.id("u");
      const mine = (list: PushDeadLetter[]) => list.filter((d) => d.job.notification.userId === u);
      const added: PushDeadLetter[] = [];
      for (const name of ["a", "b", "c"]) {
        added.push(await h.b.pushDeadLetters.add(job(h.id(name), u), `error ${name}`));
        await new Promise((r) => setTimeout(r, 3)); // distinct failure times
      }
      for (const d of added) {
        expect(parseDeadLetterId(d.id)).toEqual({ deadAtMs: d.deadAtMs, jobId: d.job.id });
        expect(d.job).toEqual(job(d.job.id, u));
      }
      const newestFirst = [...added].reverse();
      expect(mine(await h.b.pushDeadLetters.list(1_000))).toEqual(newestFirst);
      // The page after the newest holds the two older ones, in order.
      expect(mine(await h.b.pushDeadLetters.list(1_000, added[2]!.id))).toEqual(newestFirst.slice(1));
      expect(await h.b.pushDeadLetters.list(10, "not-an-id")).toEqual([]);

      // Concurrent takes of one id: one caller gets it. Unknown and malformed ids are skipped.
      const contested = await Promise.all(range(1, 5).map(() => h.b.pushDeadLetters.take([added[1]!.id])));
      expect(contested.flat()).toEqual([added[1]]);
      // A page's last id, replayed since, still says where the next page starts.
      expect(mine(await h.b.pushDeadLetters.list(1_000, added[1]!.id))).toEqual([added[0]]);
      expect(await h.b.pushDeadLetters.take([added[0]!.id, deadLetterId(1, h.id("none")), "junk"])).toEqual([
        added[0],
      ]);
      expect(mine(await h.b.pushDeadLetters.list(1_000))).toEqual([added[2]]);
      expect(await h.b.pushDeadLetters.take([added[0]!.id])).toEqual([]);
    });
  });

  describe("device store", () => {
    const device = (
      userId: string,
      deviceId: string,
      token = `token-${userId}-${deviceId}`,
    ): DeviceRecord => ({
      userId,
      deviceId,
      provider: "webpush",
      token,
      registeredAtMs: 1_000,
    });
    const byId = (list: DeviceRecord[]) => [...list].sort((x, y) => (x.deviceId < y.deviceId ? -1 : 1));

    it("put replaces by (user, device), list is per user, remove deletes", async (ctx) => {
      const h = await setup(ctx);
      const [u, v] = [h.id("u"), h.id("u0")];
      await h.b.devices.put(device(u, "laptop"));
      await h.b.devices.put(device(u, "phone"));
      await h.b.devices.put(device(v, "phone"));
      expect(byId(await h.b.devices.list(u))).toEqual([device(u, "laptop"), device(u, "phone")]);

      const rotated = {
        ...device(u, "phone", "new-token"),
        provider: "apns" as const,
        registeredAtMs: 2_000,
      };
      await h.b.devices.put(rotated);
      expect(byId(await h.b.devices.list(u))).toEqual([device(u, "laptop"), rotated]);

      await h.b.devices.remove(u, "laptop");
      await h.b.devices.remove(u, "never-registered");
      expect(await h.b.devices.list(u)).toEqual([rotated]);
      expect(await h.b.devices.list(v)).toEqual([device(v, "phone")]);
      expect(await h.b.devices.list(h.id("nobody"))).toEqual([]);
    });

    it("a device token belongs to one registration; a webhook URL may serve many users", async (ctx) => {
      const h = await setup(ctx);
      const [a, b] = [h.id("a"), h.id("b")];
      const phone = (userId: string, deviceId: string, token: string): DeviceRecord => ({
        userId,
        deviceId,
        provider: "apns",
        token,
        registeredAtMs: 1_000,
      });
      const [t1, t2] = [`t1-${h.id("tok")}`, `t2-${h.id("tok")}`];
      // The phone is handed from a to b: b's registration takes the token, a's is gone.
      await h.b.devices.put(phone(a, "iphone", t1));
      await h.b.devices.put(device(a, "laptop"));
      await h.b.devices.put(phone(b, "iphone", t1));
      expect(byId(await h.b.devices.list(a))).toEqual([device(a, "laptop")]);
      expect(await h.b.devices.list(b)).toEqual([phone(b, "iphone", t1)]);
      // The app reinstalled under a new device id: the old id's registration goes.
      await h.b.devices.put(phone(b, "iphone-2", t1));
      expect(await h.b.devices.list(b)).toEqual([phone(b, "iphone-2", t1)]);
      // A registration that moved on to a new token keeps it when its old token is registered elsewhere.
      await h.b.devices.put(phone(b, "iphone-2", t2));
      await h.b.devices.put(phone(a, "iphone", t1));
      expect(await h.b.devices.list(b)).toEqual([phone(b, "iphone-2", t2)]);
      expect(byId(await h.b.devices.list(a))).toEqual([phone(a, "iphone", t1), device(a, "laptop")]);
      // After an unregistration the token is free: registering it elsewhere removes nothing more.
      await h.b.devices.remove(a, "iphone");
      await h.b.devices.put(phone(b, "ipad", t1));
      expect(byId(await h.b.devices.list(b))).toEqual([phone(b, "ipad", t1), phone(b, "iphone-2", t2)]);
      expect(await h.b.devices.list(a)).toEqual([device(a, "laptop")]);
      // One webhook URL, two users: both keep it.
      const hook = (userId: string): DeviceRecord => ({
        userId,
        deviceId: "crm",
        provider: "webhook",
        token: `https://crm.example/${h.id("hook")}`,
        registeredAtMs: 1_000,
      });
      await h.b.devices.put(hook(a));
      await h.b.devices.put(hook(b));
      expect((await h.b.devices.list(a)).map((d) => d.deviceId).sort()).toEqual(["crm", "laptop"]);
      expect((await h.b.devices.list(b)).map((d) => d.deviceId).sort()).toEqual(["crm", "ipad", "iphone-2"]);
    });

    it("removeIfToken removes a registration only while it holds that token", async (ctx) => {
      const h = await setup(ctx);
      const [a, b] = [h.id("a"), h.id("b")];
      const phone = (userId: string, token: string): DeviceRecord => ({
        userId,
        deviceId: "iphone",
        provider: "apns",
        token,
        registeredAtMs: 1_000,
      });
      const [t1, t2, t3] = [`t1-${h.id("tok")}`, `t2-${h.id("tok")}`, `t3-${h.id("tok")}`];
      await h.b.devices.put(device(a, "laptop"));
      await h.b.devices.put(phone(a, t1));
      // The phone registered t2 after t1 was sent to: pruning t1 leaves it.
      await h.b.devices.put(phone(a, t2));
      expect(await h.b.devices.removeIfToken(a, "iphone", t1)).toBe(false);
      expect(byId(await h.b.devices.list(a))).toEqual([phone(a, t2), device(a, "laptop")]);
      expect(await h.b.devices.removeIfToken(a, "iphone", t2)).toBe(true);
      expect(await h.b.devices.list(a)).toEqual([device(a, "laptop")]);
      expect(await h.b.devices.removeIfToken(a, "iphone", t2)).toBe(false);
      expect(await h.b.devices.removeIfToken(a, "never-registered", t2)).toBe(false);
      // The removed token is nobody's: registering it elsewhere takes nothing from anyone.
      await h.b.devices.put(phone(b, t2));
      expect(await h.b.devices.list(b)).toEqual([phone(b, t2)]);
      expect(await h.b.devices.list(a)).toEqual([device(a, "laptop")]);
      // A prune racing a registration of a fresh token: whichever comes first, the fresh token stays.
      await h.b.devices.put(phone(a, t1));
      await Promise.all([h.b.devices.removeIfToken(a, "iphone", t1), h.b.devices.put(phone(a, t3))]);
      expect(byId(await h.b.devices.list(a))).toEqual([phone(a, t3), device(a, "laptop")]);
    });

    itUnless("devices-list-omits-non-bmp-device-ids")(
      // Device ids are the registering service's choice (RegisterDevice checks only that one is set):
      // 𠮷 (U+20BB7, a common name character) or an emoji are as valid as ASCII.
      "list() includes devices whose ids start outside the Basic Multilingual Plane",
      async (ctx) => {
        const h = await setup(ctx);
        const u = h.id("u");
        const devices = [
          device(u, "laptop"),
          device(u, "\u{1F4F1} phone"),
          device(u, "\u{20BB7}\u7530's tablet"),
        ];
        for (const d of devices) await h.b.devices.put(d);
        expect(byId(await h.b.devices.list(u))).toEqual(byId(devices));
      },
    );
  });
}
