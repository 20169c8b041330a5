/**
 * http.internalPort on a real `switchboard start`: /metrics moves to a port of its own, never the
 * one behind the clients' load balancer. The client port then answers /metrics with 404 and keeps
 * /healthz and /readyz (load balancers' health checks); the internal port serves those three paths
 * and nothing else. Off (the default), /metrics stays on the client port and no other port opens. A
 * configuration where the internal port is another server's port, or a port already taken, stops the
 * process at start with a message that names the setting.
 */
import { connect, createServer } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort, listeningPorts } from "../helpers/grpc.js";
import { RawClient } from "../helpers/raw-client.js";
import { devToken, refusedStart, type ServerProcess, startServer } from "../helpers/server.js";

let server: ServerProcess;
let internalPort: number;

beforeAll(async () => {
  internalPort = await freePort();
  server = await startServer({ env: { SWITCHBOARD_HTTP_INTERNAL_PORT: String(internalPort) } });
});
afterAll(async () => {
  await server?.dispose();
});

const get = (port: number, path: string) => fetch(`http://127.0.0.1:${port}${path}`);

/** The status line a WebSocket upgrade request to `port` gets. */
async function upgradeStatus(port: number, token: string): Promise<string> {
  const socket = connect(port, "127.0.0.1");
  socket.on("error", () => {});
  await new Promise<void>((r) => socket.once("connect", () => r()));
  socket.write(
    `GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer ${token}\r\n\r\n`,
  );
  const answer = await new Promise<string>((r) => socket.once("data", (d: Buffer) => r(d.toString())));
  socket.destroy();
  return answer.split("\r\n")[0] ?? "";
}

describe("with http.internalPort", () => {
  it("reports the port in the start-up line, and listens on it and the client port only", async () => {
    expect(server.startLine.internal_port).toBe(internalPort);
    expect(await listeningPorts(server.child.pid!)).toEqual(
      [server.port, internalPort].sort((a, b) => a - b),
    );
  });

  it("serves /metrics on the internal port only: Prometheus text there, 404 on the client port", async () => {
    const metrics = await get(internalPort, "/metrics");
    expect(metrics.status).toBe(200);
    expect(metrics.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await metrics.text();
    expect(text).toMatch(/^# HELP switchboard_/m);
    expect(text).toMatch(/^switchboard_gateway_connections /m);
    const client = await get(server.port, "/metrics");
    expect(client.status).toBe(404);
    expect(await client.text()).not.toContain("switchboard_");
  });

  it("answers /healthz and /readyz on both ports", async () => {
    for (const port of [server.port, internalPort]) {
      const health = await get(port, "/healthz");
      expect(health.status, `port ${port}`).toBe(200);
      expect(await health.json()).toEqual({ status: "ok" });
      const ready = await get(port, "/readyz");
      expect(ready.status, `port ${port}`).toBe(200);
      expect(await ready.json()).toEqual({ status: "ready" });
    }
  });

  it("serves nothing else on the internal port: no WebSocket, no /v1/connect, no web client", async () => {
    const token = await devToken(server.dataDir, "alice");
    expect(await upgradeStatus(internalPort, token)).toBe("HTTP/1.1 404 Not Found");
    for (const path of ["/v1/connect", "/", "/app.js", "/v1/dev/token?user=alice", "/nope"]) {
      const res = await get(internalPort, path);
      expect(res.status, path).toBe(404);
    }
    expect((await fetch(`http://127.0.0.1:${internalPort}/metrics`, { method: "POST" })).status).toBe(405);
    // The client port still does its job.
    expect((await get(server.port, "/v1/connect")).status).toBe(200);
    expect(await upgradeStatus(server.port, token)).toBe("HTTP/1.1 101 Switching Protocols");
    const c = await RawClient.connect(server.url, { token });
    c.close();
  });
});

describe("without http.internalPort", () => {
  it("keeps /metrics on the client port, and opens no other port", async () => {
    const plain = await startServer();
    try {
      expect(plain.startLine.internal_port).toBeUndefined();
      const res = await get(plain.port, "/metrics");
      expect(res.status).toBe(200);
      expect(await res.text()).toMatch(/^# HELP switchboard_/m);
      expect(await listeningPorts(plain.child.pid!)).toEqual([plain.port]);
    } finally {
      await plain.dispose();
    }
  });
});

describe("an internal port that cannot be its own", () => {
  it("is refused at start when it is http.port or grpc.port", async () => {
    const port = await freePort();
    const same = await refusedStart(["--port", String(port)], {
      SWITCHBOARD_HTTP_INTERNAL_PORT: String(port),
    });
    expect(same.code).toBe(1);
    expect(same.stderr).toMatch(
      /invalid configuration: http\.internalPort \(SWITCHBOARD_HTTP_INTERNAL_PORT\) and http\.port \(SWITCHBOARD_HTTP_PORT\): both are \d+: the internal port .* needs a port of its own/,
    );
    const grpc = await refusedStart(["--port", "0", "--grpc-port", String(port), "--dev"], {
      SWITCHBOARD_HTTP_INTERNAL_PORT: String(port),
    });
    expect(grpc.code).toBe(1);
    expect(grpc.stderr).toMatch(
      /invalid configuration: http\.internalPort \(SWITCHBOARD_HTTP_INTERNAL_PORT\) and grpc\.port \(SWITCHBOARD_GRPC_PORT\)/,
    );
  });

  it("stops the start when its port is taken, naming the setting", async () => {
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, "127.0.0.1", () => r()));
    const { port } = taken.address() as { port: number };
    try {
      const r = await refusedStart(["--port", "0"], { SWITCHBOARD_HTTP_INTERNAL_PORT: String(port) });
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(
        /the internal HTTP server \(http\.internalPort, SWITCHBOARD_HTTP_INTERNAL_PORT\) could not listen on 127\.0\.0\.1:\d+: listen EADDRINUSE/,
      );
    } finally {
      taken.close();
    }
  });
});
