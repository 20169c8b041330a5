/**
 * A webhook receiver that does what the README tells integrators to do: recompute the HMAC over
 * "<timestamp>.<raw body>" with a constant-time compare, and refuse a timestamp outside the replay
 * window or a notification id already seen.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { encodeBody, Script, type ScriptedAnswer } from "./scripted.js";

export interface WebhookDelivery {
  path: string;
  headers: IncomingMessage["headers"];
  body: {
    notification_id: string;
    user_id: string;
    conversation_id: string;
    title: string;
    body: string;
    message_count: number;
    unread_count: number;
  };
}

export class WebhookReceiver {
  readonly script = new Script();
  readonly delivered: WebhookDelivery[] = [];
  private readonly seen = new Set<string>();
  private readonly server: Server;
  origin = "";

  constructor(
    readonly secret: string,
    readonly replayWindowSeconds = 300,
  ) {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => this.handle(req, res, Buffer.concat(chunks).toString("utf8")));
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.origin = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  private handle(req: IncomingMessage, res: ServerResponse, raw: string): void {
    const reply = (a: ScriptedAnswer) => res.writeHead(a.status, a.headers).end(encodeBody(a.body));
    const refuse = (status: number, reason: string) => {
      this.script.violation(reason);
      reply({ status, body: reason });
    };
    const timestamp = String(req.headers["x-switchboard-timestamp"] ?? "");
    const signature = String(req.headers["x-switchboard-signature"] ?? "");
    if (!/^\d+$/.test(timestamp)) return refuse(401, "no timestamp");
    if (Math.abs(Date.now() / 1000 - Number(timestamp)) > this.replayWindowSeconds) {
      return refuse(401, "timestamp outside the replay window");
    }
    const expected = `v1=${createHmac("sha256", this.secret).update(`${timestamp}.${raw}`).digest("hex")}`;
    const a = Buffer.from(signature);
    const b = Buffer.from(expected);
    if (a.length !== b.length || !timingSafeEqual(a, b)) return refuse(401, "bad signature");
    const body = JSON.parse(raw) as WebhookDelivery["body"];
    if (this.seen.has(body.notification_id)) return refuse(409, "replayed notification id");
    const answer = this.script.answer(req.url ?? "/", { status: 204 });
    if (answer.status < 300) {
      this.seen.add(body.notification_id);
      this.delivered.push({ path: req.url ?? "/", headers: req.headers, body });
    }
    reply(answer);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
