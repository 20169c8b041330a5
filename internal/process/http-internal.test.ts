/**
 * The internal HTTP server (http.internalPort), in process: "off" is 0 and never a random port, it
 * may not be http.port or grpc.port, and it follows the client server's rules (the headers timeout,
 * a close bounded by CLOSE_GRACE_MS, a listen failure that fails the start and leaves nothing open).
 */
import { connect, createServer, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { freePort } from "../../test/helpers/grpc.js";
import type { Gateway } from "../gateway/index.js";
import { loadConfig } from "../lib/config.js";
import { discardingLogger } from "../lib/log.js";
import { createMetrics } from "../lib/metrics.js";
import { CLOSE_GRACE_MS, type RunningHttp, serveHttp } from "./http.js";

const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function serve(overrides: Record<string, string>, servesClients = false): Promise<RunningHttp> {
  const http = await serveHttp({
    config: loadConfig({}, { "http.port": "0", ...overrides }),
    log: discardingLogger(),
    metrics: createMetrics(),
    notReady: () => (servesClients ? "starting" : undefined),
    gateway: () => undefined,
    servesClients,
  });
  // Closing twice is an error ("Server is not running"): a test that closed it itself already did.
  cleanup.push(() => http.close().catch(() => undefined));
  return http;
}

/**
 * serve() with the internal server on a free port. freePort's port is free only when it answers, and
 * the client server, bound to port 0 first, may be handed that very port: then another one.
 */
async function serveWithInternal(overrides: Record<string, string> = {}): Promise<RunningHttp> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await serve({ ...overrides, "http.internalPort": String(await freePort()) });
    } catch (err) {
      if (attempt >= 5 || !String((err as Error).message).includes("EADDRINUSE")) throw err;
    }
  }
}

async function socketTo(port: number): Promise<Socket> {
  const socket = connect(port, "127.0.0.1");
  socket.on("error", () => {});
  cleanup.push(() => socket.destroy());
  await new Promise<void>((r) => socket.once("connect", () => r()));
  return socket;
}

/** Whether something accepts TCP connections on the port. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

describe("http.internalPort in the configuration", () => {
  it("is off by default (0), and an empty value is refused rather than read as a port", () => {
    expect(loadConfig({}).http.internalPort).toBe(0);
    expect(loadConfig({ SWITCHBOARD_HTTP_INTERNAL_PORT: "9091" }).http.internalPort).toBe(9091);
    expect(() => loadConfig({ SWITCHBOARD_HTTP_INTERNAL_PORT: "" })).toThrow(
      /SWITCHBOARD_HTTP_INTERNAL_PORT=.*set but empty/,
    );
    expect(() => loadConfig({ SWITCHBOARD_HTTP_INTERNAL_PORT: "70000" })).toThrow(/\[0, 65535\]/);
  });

  it("may not be http.port, nor a non-zero grpc.port", () => {
    expect(() => loadConfig({}, { "http.internalPort": "8080" })).toThrow(
      /invalid configuration: http\.internalPort \(SWITCHBOARD_HTTP_INTERNAL_PORT\) and http\.port \(SWITCHBOARD_HTTP_PORT\): both are 8080/,
    );
    expect(() => loadConfig({}, { "http.internalPort": "9090", "grpc.port": "9090" })).toThrow(
      /http\.internalPort \(SWITCHBOARD_HTTP_INTERNAL_PORT\) and grpc\.port \(SWITCHBOARD_GRPC_PORT\): both are 9090/,
    );
    // Off, it clashes with nothing: http.port 0 and grpc.port 0 are random ports, not "off".
    expect(() => loadConfig({}, { "http.port": "0" })).not.toThrow();
    expect(loadConfig({}, { "http.internalPort": "9091", "grpc.port": "9090" }).http.internalPort).toBe(9091);
  });
});

describe("the internal server", () => {
  it("answers /metrics there only, and 404 with metrics.enabled off", async () => {
    const http = await serveWithInternal();
    const internalPort = http.internalPort!;
    expect(internalPort).not.toBe(http.port);
    expect((await fetch(`http://127.0.0.1:${internalPort}/metrics`)).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${http.port}/metrics`)).status).toBe(404);
    const off = await serveWithInternal({ "metrics.enabled": "false" });
    const res = await fetch(`http://127.0.0.1:${off.internalPort}/metrics`);
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({ error: "metrics disabled" });
    // Off: no internal server, metrics on the client port.
    const plain = await serve({});
    expect(plain.internalPort).toBeUndefined();
    expect((await fetch(`http://127.0.0.1:${plain.port}/metrics`)).status).toBe(200);
  });

  it("cuts a request whose headers never end at http.headersTimeoutMs", async () => {
    const http = await serveWithInternal({ "http.headersTimeoutMs": "1000" });
    const socket = await socketTo(http.internalPort!);
    const t0 = Date.now();
    socket.write("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    let answer = "";
    socket.on("data", (d: Buffer) => {
      answer += d.toString();
    });
    await new Promise<void>((r) => socket.once("close", () => r()));
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
    expect(Date.now() - t0).toBeLessThan(1_000 + 1_000);
  });

  it("closes with the client server, within the grace, whatever its connections do", async () => {
    const http = await serveWithInternal();
    const internalPort = http.internalPort!;
    // A connection that never sends a byte, and one whose request never ends.
    await socketTo(internalPort);
    (await socketTo(internalPort)).write("GET /metrics HTTP/1.1\r\n");
    const t0 = Date.now();
    await http.close();
    expect(Date.now() - t0).toBeLessThan(CLOSE_GRACE_MS + 500);
    expect(await accepts(internalPort)).toBe(false);
    expect(await accepts(http.port)).toBe(false);
  });

  it("fails the start when its port is taken, leaving the client port closed", async () => {
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, "127.0.0.1", () => r()));
    cleanup.push(() => new Promise((r) => taken.close(r)));
    const internalPort = (taken.address() as { port: number }).port;
    const port = await freePort();
    await expect(
      serveHttp({
        config: loadConfig({}, { "http.port": String(port), "http.internalPort": String(internalPort) }),
        log: discardingLogger(),
        metrics: createMetrics(),
        notReady: () => undefined,
        gateway: () => undefined,
        servesClients: false,
      }),
    ).rejects.toThrow(
      `the internal HTTP server (http.internalPort, SWITCHBOARD_HTTP_INTERNAL_PORT) could not listen on 127.0.0.1:${internalPort}: listen EADDRINUSE`,
    );
    expect(await accepts(port)).toBe(false);
  });
});

describe("a gateway's port before its gateway exists", () => {
  /** The status line a WebSocket upgrade to /ws gets. */
  async function upgradeAnswer(port: number): Promise<string> {
    const socket = await socketTo(port);
    socket.write(
      "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    let answer = "";
    socket.on("data", (d: Buffer) => {
      answer += d.toString();
    });
    await new Promise<void>((r) => socket.once("close", () => r()));
    return answer.split("\r\n")[0] ?? "";
  }

  it("tells clients to come back (503) while starting, where a process without one says 404", async () => {
    const starting = await serve({}, true);
    expect(await upgradeAnswer(starting.port)).toBe("HTTP/1.1 503 Service Unavailable");
    const connect = await fetch(`http://127.0.0.1:${starting.port}/v1/connect`);
    expect(connect.status).toBe(503);
    expect(connect.headers.get("retry-after")).toBe("1");
    expect(connect.headers.get("access-control-allow-origin")).toBe("*");
    expect(((await connect.json()) as { error: string }).error).toMatch(/^starting/);
    expect((await fetch(`http://127.0.0.1:${starting.port}/readyz`)).status).toBe(503);

    const noGateway = await serve({});
    expect(await upgradeAnswer(noGateway.port)).toBe("HTTP/1.1 404 Not Found");
    expect((await fetch(`http://127.0.0.1:${noGateway.port}/v1/connect`)).status).toBe(404);
  });
});

describe("/v1/connect follows readiness", () => {
  it("sends no one to a gateway that is not ready, without saying why (that is /readyz's)", async () => {
    let why: string | undefined;
    const gateway = { id: "gw-1", connections: 3, isDraining: false } as unknown as Gateway;
    const http = await serveHttp({
      config: loadConfig({}, { "http.port": "0" }),
      log: discardingLogger(),
      metrics: createMetrics(),
      notReady: () => why,
      gateway: () => gateway,
      servesClients: true,
    });
    cleanup.push(() => http.close().catch(() => undefined));
    const ask = (path: string) => fetch(`http://127.0.0.1:${http.port}${path}`);

    expect((await (await ask("/v1/connect")).json()) as object).toMatchObject({
      gateway_id: "gw-1",
      connections: 3,
    });
    why = "Cassandra: no connected node among 10.1.2.3:9042";
    const refused = await ask("/v1/connect");
    expect(refused.status).toBe(503);
    expect(refused.headers.get("retry-after")).toBe("1");
    expect(refused.headers.get("access-control-allow-origin")).toBe("*");
    expect(await refused.json()).toEqual({
      error: "not ready: this gateway takes no new connections; ask again",
    });
    expect(await (await ask("/readyz")).json()).toEqual({ status: "not ready", reason: why });
    why = "draining";
    expect(await (await ask("/v1/connect")).json()).toEqual({
      error: "draining: this gateway takes no new connections; ask again",
    });
  });
});
