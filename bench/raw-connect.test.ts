/**
 * The bench's lean WebSocket client against a real `ws` server: the upgrade it writes is accepted,
 * its accept check and frame reading work, it answers pings with pongs a server understands, and it
 * fails with the reason when refused.
 */
import { createServer, type IncomingMessage, type Server } from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { type WebSocket, WebSocketServer } from "ws";
import { openRaw } from "./raw-connect.js";

const servers: Array<{ server: Server; wss: WebSocketServer }> = [];

afterEach(async () => {
  for (const { server, wss } of servers.splice(0)) {
    for (const c of wss.clients) c.terminate();
    wss.close();
    await new Promise((r) => server.close(r));
  }
});

/** A ws server on a free port; `onConnection` gets each accepted socket and its upgrade request. */
async function start(onConnection: (ws: WebSocket, req: IncomingMessage) => void, refuse = false) {
  const server = createServer();
  const wss = new WebSocketServer({ noServer: true, handleProtocols: (p) => [...p][0] ?? false });
  servers.push({ server, wss });
  server.on("upgrade", (req, socket, head) => {
    if (refuse) socket.end("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
    else wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws, req));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as { port: number };
  return `ws://127.0.0.1:${port}/ws`;
}

describe("openRaw", () => {
  it("upgrades with the headers asked for, resolves at the accepted frame and answers pings", async () => {
    let seen: { protocol: string; auth: string | undefined; first: string } | undefined;
    let ponged: (payload: string) => void = () => undefined;
    const pong = new Promise<string>((resolve) => {
      ponged = resolve;
    });
    const url = await start((ws, req) => {
      ws.once("message", (data) => {
        seen = { protocol: ws.protocol, auth: req.headers.authorization, first: String(data) };
        ws.send(Buffer.from("not yet"));
        ws.send(Buffer.alloc(70_000, 1)); // a 64-bit length: the frame reader must skip it whole
        ws.send(Buffer.from("welcome"));
        ws.once("pong", (payload) => ponged(payload.toString()));
        setTimeout(() => ws.ping("are you there"), 20);
      });
    });
    const accepted: string[] = [];
    const connection = await openRaw({
      url,
      protocol: "switchboard.v1.proto",
      headers: { Authorization: "Bearer t0k3n" },
      firstFrame: '{"connect":{}}',
      accept: (payload, binary) => {
        accepted.push(`${binary ? "binary" : "text"} ${payload.length}`);
        return binary && payload.toString() === "welcome";
      },
    });
    expect(seen).toEqual({ protocol: "switchboard.v1.proto", auth: "Bearer t0k3n", first: '{"connect":{}}' });
    expect(accepted).toEqual(["binary 7", "binary 70000", "binary 7"]);
    expect(await pong).toBe("are you there");
    connection.terminate();
  });

  it("fails with the status line when the upgrade is refused", async () => {
    const url = await start(() => undefined, true);
    await expect(openRaw({ url, accept: () => true })).rejects.toThrow("HTTP/1.1 401 Unauthorized");
  });

  it("fails with the accept callback's reason, and with the close code when closed first", async () => {
    const url = await start((ws) => ws.send("error frame"));
    await expect(openRaw({ url, accept: (p) => `expected welcome, got ${p.toString()}` })).rejects.toThrow(
      "expected welcome, got error frame",
    );
    const closing = await start((ws) => ws.close(4001, "bye"));
    await expect(openRaw({ url: closing, accept: () => true })).rejects.toThrow("closed 4001");
  });
});
