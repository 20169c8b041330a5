/**
 * Graceful stop: with gateway.shutdownDrainMs set (as the operator sets it for Kubernetes), SIGTERM
 * first tells every client to reconnect elsewhere, spread over the window, refuses new connections
 * (and says not ready), and only then stops; without it, SIGTERM closes at once with 1001. SIGINT
 * always stops at once, and so does a second signal. A stop is bounded (shutdownTimeoutMs), is not
 * held by silent or frozen clients, and exits non-zero when something failed to close; an uncaught
 * error stops the process (exit 70) after closing it.
 */
import { writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../gen/grpc/health/v1/health_pb.js";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { grpcClient } from "../../internal/lib/rpc.js";
import { RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer, tempDir } from "../helpers/server.js";

let server: ServerProcess | undefined;
const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
  await server?.dispose();
  server = undefined;
});

/** How the process ended (its code, or the signal that ended it), and when (Date.now()). */
function exitOf(
  s: ServerProcess,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }> {
  return new Promise((resolve) =>
    s.child.once("exit", (code, signal) => resolve({ code, signal, at: Date.now() })),
  );
}

/**
 * A module the server process loads first (NODE_OPTIONS=--import), to break it on purpose: `env`
 * for startServer.
 */
function preload(source: string): Record<string, string> {
  const dir = tempDir("switchboard-preload-");
  cleanup.push(() => dir.remove());
  const file = join(dir.path, "preload.mjs");
  writeFileSync(file, source);
  return { NODE_OPTIONS: `--import=${file}` };
}

/** A raw TCP connection to the server's HTTP port, kept open until the test ends. */
async function rawSocket(port: number): Promise<Socket> {
  const socket = connect(port, "127.0.0.1");
  socket.on("error", () => {});
  cleanup.push(() => socket.destroy());
  await new Promise<void>((r) => socket.once("connect", () => r()));
  return socket;
}

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

  it("stops on SIGTERM when its log streams are gone (a reader that exited): no EPIPE loop", async () => {
    // Before, the first log line written to a closed pipe failed with EPIPE, reported as an uncaught
    // exception to the same pipe, failing again: the process spun at 100 % of a core and never exited.
    server = await startServer({ env: { SWITCHBOARD_LOG_LEVEL: "info" } }); // a stop logs at info
    const connected = await clients(server, 1);
    server.child.stdout!.destroy();
    server.child.stderr!.destroy();
    const exited = exitOf(server);
    server.child.kill("SIGTERM"); // stopping logs, to the closed pipes
    expect(await connected[0]!.closed).toBe(1001);
    const exit = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(r, 10_000))]);
    expect(exit).toMatchObject({ code: 0, signal: null });
  });

  it("answers the sends it had accepted before it closes with 1001: none stored goes unacknowledged", async () => {
    const send = (client: RawClient, i: number) =>
      client.request({
        case: "send",
        value: { target: { case: "toUser", value: "stop-peer" }, clientMsgId: `burst-${i}`, body: `${i}` },
      });
    const total = 80; // within the send burst: no RATE_LIMITED
    // A stop that comes before the server read any of the burst proves nothing: up to three rounds,
    // until one where sends were being handled when it came.
    let ackedInAll = 0;
    for (let round = 0; round < 3 && ackedInAll === 0; round++) {
      await server?.dispose();
      server = await startServer();
      const [c] = await clients(server, 1);
      const acked = new Set<number>();
      const replies = Array.from({ length: total }, (_, i) =>
        send(c!, i).then(
          (f) => {
            if (f.kind.case === "ack") acked.add(i);
          },
          () => undefined, // no reply before the close: not read, or not answered
        ),
      );
      const exited = exitOf(server);
      server.child.kill("SIGTERM");
      expect(await c!.closed).toBe(1001);
      await Promise.all(replies);
      expect((await exited).code).toBe(0);
      server = await server.restart();
      const [again] = await clients(server, 1);
      // Each send without an ack, resent with its clientMsgId: a stored one would come back duplicate.
      const storedUnacked: number[] = [];
      for (let i = 0; i < total; i++) {
        if (acked.has(i)) continue;
        const f = await send(again!, i);
        if (f.kind.case === "ack" && f.kind.value.duplicate) storedUnacked.push(i);
      }
      expect(storedUnacked).toEqual([]);
      ackedInAll += acked.size;
    }
    expect(ackedInAll).toBeGreaterThan(0);
  });

  it("stops at once on SIGINT even with a drain window", async () => {
    server = await startServer({ env: { SWITCHBOARD_GATEWAY_SHUTDOWN_DRAIN_MS: "5000" } });
    const connected = await clients(server, 2);
    const t0 = Date.now();
    server.child.kill("SIGINT");
    expect(await Promise.all(connected.map((c) => c.closed))).toEqual([1001, 1001]);
    expect(Date.now() - t0).toBeLessThan(1_000);
  });

  it("a second signal exits at once: SIGINT during a SIGTERM's drain", async () => {
    server = await startServer({ env: { SWITCHBOARD_GATEWAY_SHUTDOWN_DRAIN_MS: "10000" } });
    const [c] = await clients(server, 2);
    const exited = exitOf(server);
    server.child.kill("SIGTERM");
    // Draining: the clients are told to go.
    await c!.nextEvent((f) => f.kind.case === "reconnect", 5_000);
    const t0 = Date.now();
    server.child.kill("SIGINT");
    const { code, at } = await exited;
    expect(code).toBe(130);
    expect(at - t0).toBeLessThan(1_000);
    expect(server.stderr()).toContain("second signal while stopping: exiting at once");
  });
});

describe("readiness while a gateway drains", () => {
  it("is lost when SIGTERM starts the drain: /readyz 503, and /v1/connect sends no one here", async () => {
    server = await startServer({ env: { SWITCHBOARD_GATEWAY_SHUTDOWN_DRAIN_MS: "3000" } });
    const [c] = await clients(server, 1);
    expect((await fetch(`${server.httpUrl}/readyz`)).status).toBe(200);
    expect((await fetch(`${server.httpUrl}/v1/connect`)).status).toBe(200);
    server.child.kill("SIGTERM");
    await c!.nextEvent((f) => f.kind.case === "reconnect", 5_000);
    const ready = await fetch(`${server.httpUrl}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toEqual({ status: "not ready", reason: "draining" });
    const connect = await fetch(`${server.httpUrl}/v1/connect`);
    expect(connect.status).toBe(503);
    expect(connect.headers.get("retry-after")).toBe("1");
    expect(connect.headers.get("access-control-allow-origin")).toBe("*");
    expect(await connect.json()).toMatchObject({ error: expect.stringMatching(/^draining/) });
  });

  it("is lost when the operator's Drain call starts it, gRPC health included", async () => {
    server = await startServer({ args: ["--grpc-port", "0", "--dev"] });
    const target = `127.0.0.1:${server.grpcPort}`;
    const health = grpcClient(Health, target);
    const gateway = grpcClient(GatewayService, target);
    cleanup.push(
      () => health.close(),
      () => gateway.close(),
    );
    expect((await health.check({})).status).toBe(Serving.SERVING);
    const seen: Serving[] = [];
    const watching = (async () => {
      for await (const r of health.watch({ service: "switchboard.gateway.v1.GatewayService" }))
        seen.push(r.status);
    })().catch(() => undefined);
    await expect.poll(() => seen).toEqual([Serving.SERVING]);

    const t0 = Date.now();
    await gateway.drain({ windowMs: 1_000 });
    // The Watch stream hears of it at once, not at its next poll.
    await expect
      .poll(() => seen, { timeout: 500, interval: 20 })
      .toEqual([Serving.SERVING, Serving.NOT_SERVING]);
    expect(Date.now() - t0).toBeLessThan(500);
    expect((await health.check({})).status).toBe(Serving.NOT_SERVING);
    expect((await gateway.stats({})).draining).toBe(true);
    const ready = await fetch(`${server.httpUrl}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toEqual({ status: "not ready", reason: "draining" });
    expect((await fetch(`${server.httpUrl}/v1/connect`)).status).toBe(503);
    // Liveness is another matter: the process runs.
    expect((await fetch(`${server.httpUrl}/healthz`)).status).toBe(200);
    await server.stop();
    await watching;
  });
});

describe("a bounded stop", () => {
  it("is not held by a silent raw socket or a frozen WebSocket client", async () => {
    server = await startServer();
    // A TCP connection that never sends a byte: Node's close() waited for it for good.
    await rawSocket(server.port);
    // A WebSocket whose client stopped reading: ws waits 30 s for its answer to the close frame.
    const frozen = await rawSocket(server.port);
    frozen.write(
      `GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer ${await devToken(server.dataDir, "frozen")}\r\n\r\n`,
    );
    await new Promise<void>((r) => frozen.once("data", () => r()));
    frozen.pause();
    // And a well-behaved client, which still gets its 1001.
    const [c] = await clients(server, 1);
    const exited = exitOf(server);
    const t0 = Date.now();
    server.child.kill("SIGTERM");
    expect(await c!.closed).toBe(1001);
    const { code, at } = await exited;
    expect(code).toBe(0);
    expect(at - t0).toBeLessThan(3_000);
  });

  it("exits with code 1 when closing takes longer than shutdownTimeoutMs", async () => {
    // The HTTP server's close never completes.
    const env = preload(
      `import http from "node:http";\nhttp.Server.prototype.close = function () { return this; };\n`,
    );
    server = await startServer({ env: { ...env, SWITCHBOARD_SHUTDOWN_TIMEOUT_MS: "1500" } });
    const exited = exitOf(server);
    const t0 = Date.now();
    server.child.kill("SIGTERM");
    const { code, signal, at } = await exited;
    expect({ code, signal }).toEqual({ code: 1, signal: null });
    expect(at - t0).toBeGreaterThanOrEqual(1_400);
    expect(at - t0).toBeLessThan(4_000);
    expect(server.stderr()).toContain("shutdown did not finish within shutdownTimeoutMs");
  });

  it("exits with code 1 when something failed to close, after closing the rest", async () => {
    const env = preload(
      `import http from "node:http";\nconst close = http.Server.prototype.close;\nhttp.Server.prototype.close = function (cb) {\n  close.call(this);\n  process.nextTick(() => cb?.(new Error("injected close failure")));\n  return this;\n};\n`,
    );
    server = await startServer({ env });
    const [c] = await clients(server, 1);
    const exited = exitOf(server);
    server.child.kill("SIGTERM");
    expect(await c!.closed).toBe(1001);
    expect((await exited).code).toBe(1);
    expect(server.stderr()).toContain("injected close failure");
    expect(server.stderr()).toContain("shutdown failed");
  });
});

describe("an uncaught error", () => {
  it("does not stop the process for cassandra-driver's control-connection race, which the driver recovers from", async () => {
    // The rejection the driver leaves unhandled when two refreshes of its control connection race
    // (internal/backends/cassandra/driver-races.ts), with the driver's own stack.
    const env = preload(
      `process.on("SIGUSR2", () => {
        const err = new TypeError("Cannot read properties of null (reading 'once')");
        err.stack = "TypeError: Cannot read properties of null (reading 'once')\\n    at ControlConnection._setHealthListeners (/app/node_modules/cassandra-driver/lib/control-connection.js:259:10)\\n    at ControlConnection._refresh (/app/node_modules/cassandra-driver/lib/control-connection.js:506:10)";
        Promise.reject(err);
      });\n`,
    );
    const s = await startServer({ env });
    server = s;
    const [c] = await clients(s, 1);
    s.child.kill("SIGUSR2");
    await vi.waitFor(() => expect(s.stderr()).toContain("control connection failed beside another"));
    expect(s.stderr()).not.toContain('"level":"fatal"');
    expect((await fetch(`${s.httpUrl}/readyz`)).status).toBe(200);
    expect(c!.ws.readyState).toBe(c!.ws.OPEN);
  });

  it("writes Node's own warnings as JSON log lines, like every other line of a server's log", async () => {
    const env = preload(
      `process.on("SIGUSR2", () => process.emitWarning("11 down listeners added to [Host]", "MaxListenersExceededWarning"));\n`,
    );
    const s = await startServer({ env: { ...env, SWITCHBOARD_LOG_LEVEL: "info" } });
    server = s;
    s.child.kill("SIGUSR2");
    await vi.waitFor(() => expect(s.stderr()).toContain("MaxListenersExceededWarning"));
    const lines = s
      .stderr()
      .split("\n")
      .filter((l) => l !== "");
    for (const line of lines) expect(() => JSON.parse(line), line).not.toThrow();
    const warning = lines
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.msg === "node: MaxListenersExceededWarning");
    expect(warning).toMatchObject({ level: "warn", err: { message: "11 down listeners added to [Host]" } });
  });

  it("logs one fatal line, closes the process (clients get 1001) and exits 70", async () => {
    // SIGUSR2 makes the process reject a promise nothing handles.
    const env = preload(
      `process.on("SIGUSR2", () => { Promise.reject(new Error("injected unhandled rejection")); });\n`,
    );
    server = await startServer({ env });
    const [c] = await clients(server, 1);
    const exited = exitOf(server);
    server.child.kill("SIGUSR2");
    expect(await c!.closed).toBe(1001);
    expect((await exited).code).toBe(70);
    const fatal = server
      .stderr()
      .split("\n")
      .filter((l) => l.includes('"level":"fatal"'))
      .map((l) => JSON.parse(l) as { msg: string; err: { message: string } });
    expect(fatal).toHaveLength(1);
    expect(fatal[0]).toMatchObject({
      msg: "unhandled promise rejection; stopping",
      err: { message: "injected unhandled rejection" },
    });
  });
});
