/**
 * Graceful stop: with gateway.shutdownDrainMs set (as the operator sets it for Kubernetes), SIGTERM
 * first tells every client to reconnect elsewhere, spread over the window, refuses new connections,
 * and only then stops; without it, SIGTERM closes at once with 1001. SIGINT always stops at once.
 */
import { afterEach, describe, expect, it } from "vitest";
import { RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer } from "../helpers/server.js";

let server: ServerProcess | undefined;
afterEach(async () => {
  await server?.dispose();
  server = undefined;
});

async function clients(s: ServerProcess, n: number): Promise<RawClient[]> {
  return Promise.all(
    Array.from({ length: n }, async (_, i) =>
      RawClient.connect(s.url, { token: await devToken(s.dataDir, `stop-${i}`) }),
    ),
  );
}

describe("stopping a gateway", () => {
  it("drains on SIGTERM: reconnect hints, closes with 3001 spread over the window, new connections refused", async () => {
    server = await startServer({ env: { SWITCHBOARD_GATEWAY_SHUTDOWN_DRAIN_MS: "1500" } });
    const connected = await clients(server, 5);
    const exited = new Promise<number>((resolve) => server?.child.once("exit", () => resolve(Date.now())));
    const t0 = Date.now();
    server.child.kill("SIGTERM");

    const hints = await Promise.all(
      connected.map((c) => c.nextEvent((f) => f.kind.case === "reconnect", 5_000)),
    );
    for (const h of hints) {
      expect(h.kind.case).toBe("reconnect");
      if (h.kind.case === "reconnect")
        expect(h.kind.value).toMatchObject({ reason: "draining", delayMsMax: 1500 });
    }
    // While draining, the gateway takes no new connections.
    await expect(RawClient.connect(server.url)).rejects.toThrow(/HTTP 503/);

    const closedAt = await Promise.all(
      connected.map((c) => c.closed.then((code) => ({ code, at: Date.now() - t0 }))),
    );
    expect(closedAt.map((c) => c.code)).toEqual([3001, 3001, 3001, 3001, 3001]);
    for (const c of closedAt) expect(c.at).toBeLessThan(1500 + 1000);
    const stoppedAfter = (await exited) - t0;
    expect(stoppedAfter).toBeLessThan(1500 + 2500);
  });

  it("closes at once with 1001 on SIGTERM when no drain window is configured", async () => {
    server = await startServer();
    const connected = await clients(server, 3);
    const t0 = Date.now();
    server.child.kill("SIGTERM");
    const codes = await Promise.all(connected.map((c) => c.closed));
    expect(codes).toEqual([1001, 1001, 1001]);
    expect(Date.now() - t0).toBeLessThan(1_000);
    expect(connected.every((c) => c.received.every((f) => f.kind.case !== "reconnect"))).toBe(true);
  });

  it("stops at once on SIGINT even with a drain window", async () => {
    server = await startServer({ env: { SWITCHBOARD_GATEWAY_SHUTDOWN_DRAIN_MS: "5000" } });
    const connected = await clients(server, 2);
    const t0 = Date.now();
    server.child.kill("SIGINT");
    expect(await Promise.all(connected.map((c) => c.closed))).toEqual([1001, 1001]);
    expect(Date.now() - t0).toBeLessThan(1_000);
  });
});
