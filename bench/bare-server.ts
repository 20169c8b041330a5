/**
 * The bare-ws baseline: the same wire shapes as Switchboard's binary protocol with nothing behind
 * them (no auth check, no storage, no router): a welcome on connect, an empty "live" sync result,
 * and for each send an ack to the sender plus a MessageEvent{client_msg_id, body} to the user named
 * by to_user. It measures the day's floor for ws + Node on this machine, generator included.
 *
 * Usage: node dist/bench/bare-server.js --port 0   (prints {"status":"started","port":N}).
 * The user is taken from the URL (?u=ID).
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { type WebSocket, WebSocketServer } from "ws";
import { varintSize, writeVarint } from "./wire.js";

const portArg = process.argv.indexOf("--port");
const port = portArg >= 0 ? Number(process.argv[portArg + 1]) : 0;

const users = new Map<string, WebSocket>();
const WELCOME = Buffer.from([0x52, 0x00]); // ServerFrame{welcome (10): {}}

let pos = 0;
function readVarint(buf: Buffer): number {
  let result = 0;
  let mul = 1;
  for (;;) {
    const byte = buf[pos++]!;
    result += (byte & 0x7f) * mul;
    if (byte < 0x80) return result;
    mul *= 128;
  }
}
function onFrame(ws: WebSocket, data: Buffer): void {
  pos = 0;
  let id = 0;
  let kind = 0;
  let ks = 0;
  let ke = 0;
  while (pos < data.length) {
    const tag = readVarint(data);
    const wire = tag & 7;
    if (tag === 0x08) id = readVarint(data);
    else if (wire === 2) {
      const len = readVarint(data);
      kind = tag >>> 3;
      ks = pos;
      ke = pos + len;
      pos = ke;
    } else if (wire === 0) readVarint(data);
    else return;
  }
  const idLen = varintSize(id);
  if (kind === 12) {
    // sync → ServerFrame{reply_to: id, sync (13): {}} (empty: has_more=false, the client is live)
    const out = Buffer.allocUnsafe(1 + idLen + 2);
    out[0] = 0x08;
    const p = writeVarint(out, 1, id);
    out[p] = 0x6a;
    out[p + 1] = 0;
    ws.send(out);
    return;
  }
  if (kind !== 11) return;
  let to = "";
  let cs = 0;
  let ce = 0;
  let bs = 0;
  let be = 0;
  pos = ks;
  while (pos < ke) {
    const tag = readVarint(data);
    const len = readVarint(data);
    if (tag === 0x12) to = data.toString("latin1", pos, pos + len);
    else if (tag === 0x1a) {
      cs = pos;
      ce = pos + len;
    } else if (tag === 0x22) {
      bs = pos;
      be = pos + len;
    }
    pos += len;
  }
  // ack → ServerFrame{reply_to: id, ack (11): {}}
  const ack = Buffer.allocUnsafe(1 + idLen + 2);
  ack[0] = 0x08;
  const p = writeVarint(ack, 1, id);
  ack[p] = 0x5a;
  ack[p + 1] = 0;
  // ServerFrame{message (12): MessageEvent{message (1): Message{client_msg_id (5), body (6)}}}
  const cl = ce - cs;
  const bl = be - bs;
  const msgLen = 1 + varintSize(cl) + cl + 1 + varintSize(bl) + bl;
  const evLen = 1 + varintSize(msgLen) + msgLen;
  const out = Buffer.allocUnsafe(1 + varintSize(evLen) + evLen);
  let q = 0;
  out[q++] = 0x62;
  q = writeVarint(out, q, evLen);
  out[q++] = 0x0a;
  q = writeVarint(out, q, msgLen);
  out[q++] = 0x2a;
  q = writeVarint(out, q, cl);
  q += data.copy(out, q, cs, ce);
  out[q++] = 0x32;
  q = writeVarint(out, q, bl);
  data.copy(out, q, bs, be);
  users.get(to)?.send(out);
  ws.send(ack);
}

const http = createServer((_req, res) => res.writeHead(404).end());
const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: false,
  handleProtocols: (p) => [...p][0] ?? false,
});
http.on("upgrade", (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => {
    const user = new URL(req.url ?? "/", "http://x").searchParams.get("u") ?? "";
    users.set(user, ws);
    ws.on("message", (data: Buffer, isBinary) => {
      if (isBinary) onFrame(ws, data);
    });
    ws.on("close", () => {
      if (users.get(user) === ws) users.delete(user);
    });
    ws.send(WELCOME);
  });
});
http.listen(port, "127.0.0.1", () => {
  process.stdout.write(
    `${JSON.stringify({ status: "started", port: (http.address() as AddressInfo).port })}\n`,
  );
});
process.once("SIGTERM", () => {
  for (const ws of wss.clients) ws.terminate();
  http.close(() => process.exit(0));
});
