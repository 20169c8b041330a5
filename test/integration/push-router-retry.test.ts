/**
 * The router's notifications of offline recipients when push fails (internal/router/router.ts): a
 * failure push may get past is asked again with backoff, others are not; the retries waiting are
 * bounded; delivery never waits for push. The router runs against stand-ins for its stores and a
 * push client stub whose answers the test gates, on fake timers.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type {
  DeliveryHandler,
  InboxDelivery,
  MembershipStore,
  MessageLog,
  RoutingEvents,
  StoredMessage,
} from "../../internal/backends/types.js";
import { errors } from "../../internal/lib/errors.js";
import { discardingLogger } from "../../internal/lib/log.js";
import { createMetrics, type Metrics } from "../../internal/lib/metrics.js";
import { Router } from "../../internal/router/router.js";

interface NotifyCall {
  userId: string;
  seq: bigint;
}

/** A router whose push client answers each notify with what `answer` returns (a rejection: a failure). */
async function setup(answer: (call: NotifyCall, n: number) => Promise<unknown>) {
  const calls: NotifyCall[] = [];
  let handler!: DeliveryHandler;
  const closeable = { close: async () => {} };
  const metrics = createMetrics();
  const router = new Router({
    log: {
      deliveries: async (h: DeliveryHandler) => {
        handler = h;
        return closeable;
      },
    } as unknown as MessageLog,
    membership: {} as MembershipStore,
    inbox: {} as never,
    routing: { subscribe: async () => closeable } as unknown as RoutingEvents,
    push: {
      notify: async (req: NotifyCall) => {
        const call = { userId: req.userId, seq: req.seq };
        calls.push(call);
        return answer(call, calls.length);
      },
    } as never,
    dialGateway: () => {
      throw new Error("no gateway here");
    },
    streamQueueBytesMax: 1 << 20,
    logger: discardingLogger(),
    metrics,
  });
  await router.start();
  return { router, calls, metrics, deliver: (batch: InboxDelivery[]) => handler.deliver(batch) };
}

const message = (seq: number): StoredMessage => ({
  conversationId: "g:1",
  seq,
  messageId: String(1000 + seq),
  sender: "carol",
  clientMsgId: `c-${seq}`,
  body: "hello",
  createdAtMs: 0,
});

/** A message to offline recipients (no session anywhere): each is to be notified. */
const toOffline = (seq: number, ...userIds: string[]): InboxDelivery => ({
  message: message(seq),
  recipients: userIds.map((userId, i) => ({ userId, cursor: i + 1 })),
});

async function dropped(metrics: Metrics, reason: string): Promise<number> {
  const metric = metrics.registry.getSingleMetric("switchboard_router_notifications_dropped_total");
  const values = (await metric?.get())?.values ?? [];
  return values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

describe("router notifications when push fails", () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
  });
  afterEach(() => vi.useRealTimers());

  it("asks push again after UNAVAILABLE, and the notification goes through; delivery does not wait for push", async () => {
    let failFirst!: () => void;
    const { router, calls, metrics, deliver } = await setup((_call, n) =>
      n === 1
        ? new Promise((_resolve, reject) => {
            failFirst = () => reject(errors.unavailable("PUSH_UNAVAILABLE", "push is restarting"));
          })
        : Promise.resolve({ devices: 1 }),
    );
    // The batch is routed while push has not answered.
    await deliver([toOffline(7, "bob")]);
    expect(calls).toEqual([{ userId: "bob", seq: 7n }]);
    failFirst();
    await vi.advanceTimersByTimeAsync(199);
    expect(calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(calls).toEqual([
      { userId: "bob", seq: 7n },
      { userId: "bob", seq: 7n },
    ]);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(calls).toHaveLength(2);
    expect(await dropped(metrics, "failed")).toBe(0);
    await router.close();
  });

  it("gives up after the last retry (200 ms, 1 s, 5 s), and at once on INVALID_ARGUMENT", async () => {
    const { router, calls, metrics, deliver } = await setup((call) =>
      Promise.reject(
        call.userId === "bad"
          ? errors.invalid("INVALID_USER_ID", "not a user id")
          : errors.unavailable("PUSH_UNAVAILABLE", "push is down"),
      ),
    );
    await deliver([toOffline(1, "bob", "bad")]);
    const of = (userId: string) => calls.filter((c) => c.userId === userId).length;
    await vi.advanceTimersByTimeAsync(0);
    expect([of("bob"), of("bad")]).toEqual([1, 1]);
    for (const [waitMs, bob] of [
      [200, 2],
      [1_000, 3],
      [5_000, 4],
      [60_000, 4],
    ]) {
      await vi.advanceTimersByTimeAsync(waitMs!);
      expect(of("bob")).toBe(bob);
    }
    expect(of("bad")).toBe(1);
    expect(await dropped(metrics, "failed")).toBe(2);
    await router.close();
  });

  it("holds at most 10,000 notifications waiting to retry and drops (counts) the rest; close drops those waiting", async () => {
    const { router, calls, metrics, deliver } = await setup(() =>
      Promise.reject(errors.unavailable("PUSH_UNAVAILABLE", "push is down")),
    );
    const users = Array.from({ length: 10_005 }, (_, i) => `u${i}`);
    await deliver([toOffline(1, ...users)]);
    await vi.advanceTimersByTimeAsync(0);
    expect(calls).toHaveLength(10_005);
    expect(await dropped(metrics, "retries_full")).toBe(5);
    await router.close();
    expect(await dropped(metrics, "closed")).toBe(10_000);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(calls).toHaveLength(10_005);
  });
});
