/**
 * Recovery after a crash: the server is killed with SIGKILL while devices are connected, and started
 * again at once on the same data dir and port. Measured from the restart (the new process's spawn):
 *
 *   - started: its start line (storage open, consumer groups joined, listening);
 *   - ready: /readyz answers 200;
 *   - first ack: a send queued while the server was down is acknowledged (its sender retries every
 *     50 ms);
 *   - reconnected: each device's SDK, with the default backoff, connected again;
 *   - live: each device, reconnecting with the SDK's default backoff (full jitter, 250 ms doubling to
 *     10 s), is live again: a message sent to it after its reconnect arrives (p50, p99, max).
 *
 * Every device must get every probe: a missing one fails the run (nothing lost). The SDK drops a
 * second copy of one message id; a body that arrives twice is a resend the server failed to dedupe (a
 * second message), and fails the run too.
 */
import { type IncomingMessage, SwitchboardClient } from "../sdk/src/index.js";
import { pool } from "./client.js";
import { nearestRank } from "./hist.js";
import type { SystemUnderTest } from "./sut.js";

export interface RestartOptions {
  devices: number;
  rounds: number;
  log: (s: string) => void;
}

export interface RestartRound {
  started_ms: number;
  ready_ms: number;
  first_ack_ms: number;
  /** The device's SDK connected again (its backoff's share). */
  reconnected_p50_ms: number;
  reconnected_max_ms: number;
  live_p50_ms: number;
  live_p99_ms: number;
  live_max_ms: number;
}

export interface RestartResult {
  devices: number;
  rounds: RestartRound[];
  worst: RestartRound;
}

function waitFor(what: string, ok: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const poll = () => {
      if (ok()) resolve();
      else if (Date.now() > deadline) reject(new Error(`restart bench: ${what} within ${timeoutMs} ms`));
      else setTimeout(poll, 10);
    };
    poll();
  });
}

export async function runRestart(sut: SystemUnderTest, o: RestartOptions): Promise<RestartResult> {
  if (!sut.crashAndRestart)
    throw new Error("restart bench: the system cannot be restarted (single process only)");
  const users = Array.from({ length: o.devices }, (_, i) => `restart-device-${i}`);
  const tokens = new Map(
    (await sut.tokens([...users, "restart-sender"])).map((t, i) => [users[i] ?? "restart-sender", t]),
  );
  const token = (u: string) => tokens.get(u)!;
  const received = new Map<string, Map<string, number>>(users.map((u) => [u, new Map()]));
  const devices = await pool(users, 50, async (u) => {
    const c = new SwitchboardClient({ url: sut.receiverUrl, token: token(u), encoding: "binary" });
    c.on("message", (m: IncomingMessage) => {
      const got = received.get(u)!;
      got.set(m.message.body, (got.get(m.message.body) ?? 0) + 1);
      got.set(`at:${m.message.body}`, Date.now());
    });
    await c.connect();
    return c;
  });
  // The sender retries every 50 ms, so that its own backoff does not hide when the server sequences
  // again (first ack) and each device's live time is its own reconnect plus the server's path.
  const sender = new SwitchboardClient({
    url: sut.senderUrl,
    token: token("restart-sender"),
    encoding: "binary",
    reconnect: { baseMs: 50, maxMs: 50 },
  });
  await sender.connect();
  const rounds: RestartRound[] = [];
  try {
    // Every device has its conversation and is live before the first crash.
    await Promise.all(users.map((u) => sender.send({ toUser: u }, "warm")));
    await waitFor(
      "every device got the warm-up message",
      () => users.every((u) => received.get(u)!.has("warm")),
      60_000,
    );
    for (let r = 0; r < o.rounds; r++) {
      const reconnected = new Map<string, number>();
      const listeners = devices.map((c, i) => {
        const u = users[i]!;
        const onConnected = () => {
          if (reconnected.has(u)) return;
          reconnected.set(u, Date.now());
          // Queued by the sender's SDK until it is connected and acknowledged; resent with the same id.
          void sender
            .send({ toUser: u }, `live-${r}-${u}`)
            .catch((err: unknown) => o.log(`  probe to ${u}: ${String(err)}`));
        };
        c.on("connected", onConnected);
        return () => c.off("connected", onConnected);
      });
      let firstAckAt = 0;
      const times = sut.crashAndRestart();
      // A send made while the server is down: acked once the platform sequences again.
      const queued = sender.send({ toUser: users[0]! }, `queued-${r}`).then(() => {
        firstAckAt = Date.now();
      });
      const t = await times;
      await queued;
      await waitFor(
        "every device live again",
        () => users.every((u) => received.get(u)!.has(`live-${r}-${u}`)),
        120_000,
      );
      for (const off of listeners) off();
      const back = users.map((u) => reconnected.get(u)! - t.spawnedAt).sort((a, b) => a - b);
      const live = users
        .map((u) => received.get(u)!.get(`at:live-${r}-${u}`)! - t.spawnedAt)
        .sort((a, b) => a - b);
      const round: RestartRound = {
        started_ms: t.startedAt - t.spawnedAt,
        ready_ms: t.readyAt - t.spawnedAt,
        first_ack_ms: firstAckAt - t.spawnedAt,
        reconnected_p50_ms: nearestRank(back, 50),
        reconnected_max_ms: back.at(-1)!,
        live_p50_ms: nearestRank(live, 50),
        live_p99_ms: nearestRank(live, 99),
        live_max_ms: live.at(-1)!,
      };
      o.log(`  restart ${r + 1}/${o.rounds}: ${JSON.stringify(round)}`);
      rounds.push(round);
    }
    await waitFor(
      "every device got its queued and live messages",
      () => received.get(users[0]!)!.has(`queued-${o.rounds - 1}`),
      60_000,
    );
    for (const u of users)
      for (const [body, count] of received.get(u)!)
        if (!body.startsWith("at:") && count !== 1)
          throw new Error(`restart bench: ${u} got "${body}" ${count} times`);
  } finally {
    await Promise.all([...devices, sender].map((c) => c.close()));
  }
  const worst = {} as RestartRound;
  for (const k of Object.keys(rounds[0]!) as Array<keyof RestartRound>)
    worst[k] = Math.max(...rounds.map((x) => x[k]));
  return { devices: o.devices, rounds, worst };
}
