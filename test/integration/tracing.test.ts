/**
 * With tracing on, one send makes one connected trace that joins the client's own trace and reaches
 * every gateway delivery, on either backend (distributed: across the Kafka hops, with the batch spans
 * linked to it). The spans are received by an OTLP/HTTP (JSON) receiver in this test, as a collector
 * would receive them.
 */
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChatService } from "../../gen/switchboard/api/v1/chat_pb.js";
import { newKey } from "../../internal/grpc-auth/key-file.js";
import { SwitchboardError } from "../../internal/lib/errors.js";
import { grpcClient } from "../../internal/lib/rpc.js";
import { spanAttribute as attr, OtlpReceiver, type OtlpSpan } from "../helpers/otlp-receiver.js";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer, tempDir, testBackend } from "../helpers/server.js";

let receiver: OtlpReceiver;
let server: ServerProcess;
/** push.webhookUrl: answers every notification 500, so each one fails. */
let failingWebhook: Server;
const bot = newKey("client:tracer");
const dir = tempDir("switchboard-tracing-");

beforeAll(async () => {
  receiver = await OtlpReceiver.start();
  failingWebhook = createServer((_req, res) => res.writeHead(500).end());
  await new Promise<void>((resolve) => failingWebhook.listen(0, "127.0.0.1", resolve));
  const keyFile = join(dir.path, "keys");
  writeFileSync(keyFile, `${bot.line}\n`);
  server = await startServer({
    args: ["--grpc-port", "0"],
    env: {
      ...receiver.env,
      SWITCHBOARD_GRPC_KEY_FILE: keyFile,
      SWITCHBOARD_GRPC_CLIENTS: "tracer=publish+sendToUsers",
      SWITCHBOARD_PUSH_WEBHOOK_URL: `http://127.0.0.1:${(failingWebhook.address() as AddressInfo).port}/hook`,
      SWITCHBOARD_PUSH_ATTEMPTS_MAX: "1",
    },
  });
});
afterAll(async () => {
  await server?.dispose();
  receiver?.close();
  failingWebhook?.close();
  dir.remove();
});

/** The spans received so far that `match`, once `done` holds for them (or a failure naming them). */
async function spansUntil(
  match: (s: OtlpSpan) => boolean,
  done: (spans: OtlpSpan[]) => boolean,
): Promise<OtlpSpan[]> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const spans = receiver.spans.filter(match);
    if (done(spans)) return spans;
    if (Date.now() > deadline)
      throw new Error(`spans incomplete; got ${spans.map((s) => s.name).join(", ") || "none"}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("tracing", () => {
  it("follows a send from the client's trace through the platform to every delivery", async () => {
    const alice = await RawClient.connect(server.url, {
      token: await devToken(server.dataDir, "trace-alice"),
    });
    const bobToken = await devToken(server.dataDir, "trace-bob");
    const bobPhone = await RawClient.connect(server.url, { token: bobToken });
    const bobLaptop = await RawClient.connect(server.url, { token: bobToken });
    await bobPhone.syncAll();
    await bobLaptop.syncAll();
    const traceId = randomBytes(16).toString("hex");
    const clientSpanId = randomBytes(8).toString("hex");
    const arrived = Promise.all(
      [bobPhone, bobLaptop].map((c) => c.nextEvent((f) => f.kind.case === "message")),
    );
    const ack = expectCase(
      await alice.request({
        case: "send",
        value: {
          target: { case: "toUser", value: "trace-bob" },
          clientMsgId: "traced",
          body: "follow me",
          traceparent: `00-${traceId}-${clientSpanId}-01`,
        },
      }),
      "ack",
    );
    await arrived;
    // The ack names the client's trace: the server's spans joined it.
    expect(ack.traceId).toBe(traceId);

    // Until the export brought the delivery's span and all its ancestors (a parent span ends, and is
    // exported, after its children).
    const deadline = Date.now() + 20_000;
    const ours = () => receiver.spans.filter((s) => s.traceId === traceId);
    const expected =
      testBackend === "distributed" ? ["send", "sequence", "inbox", "route"] : ["send", "route"];
    const complete = () =>
      ours().some((s) => s.name === "deliver" && Number(attr(s, "switchboard.connections")) >= 2) &&
      expected.every((name) => ours().some((s) => s.name === name));
    while (!complete()) {
      if (Date.now() > deadline)
        throw new Error(
          `trace incomplete; got ${ours()
            .map((s) => s.name)
            .join(", ")}`,
        );
      await new Promise((r) => setTimeout(r, 100));
    }
    const trace = ours();
    const names = trace.map((s) => s.name);
    expect(names).toContain("send");
    expect(names).toContain("route");
    if (testBackend === "distributed") {
      expect(names).toContain("sequence");
      expect(names).toContain("inbox");
    }
    // One connected tree under the client's span: every span's parent is in the trace.
    const ids = new Set([clientSpanId, ...trace.map((s) => s.spanId)]);
    for (const s of trace) expect(ids, `${s.name}'s parent ${s.parentSpanId}`).toContain(s.parentSpanId);
    const send = trace.find((s) => s.name === "send")!;
    expect(send.parentSpanId).toBe(clientSpanId);
    expect(attr(send, "switchboard.message.id")).toBe(ack.messageId);
    // The deliver span descends from the send span (route, and on Kafka sequence and inbox, between).
    const byId = new Map(trace.map((s) => [s.spanId, s]));
    let s: OtlpSpan | undefined = trace.find((x) => x.name === "deliver");
    const chain: string[] = [];
    while (s) {
      chain.push(s.name);
      s = s.parentSpanId ? byId.get(s.parentSpanId) : undefined;
    }
    expect(chain).toEqual(
      testBackend === "distributed"
        ? ["deliver", "route", "inbox", "sequence", "send"]
        : ["deliver", "route", "send"],
    );
    if (testBackend === "distributed") {
      // The Kafka batches that carried it are spans of their own, linked to the message's.
      const linked = receiver.spans.filter(
        (b) => b.name.startsWith("process ") && b.links?.some((l) => ids.has(l.spanId)),
      );
      expect(linked.length).toBeGreaterThanOrEqual(2);
    }
    alice.close();
    bobPhone.close();
    bobLaptop.close();
  });
  it("starts a trace at a server API call without a traceparent, and marks refusals and failed pushes", async () => {
    const chat = grpcClient(ChatService, `127.0.0.1:${server.grpcPort}`, { bearer: () => bot.key });
    try {
      // Nobody of trace-offline is connected: the message goes on to push.webhookUrl, which fails.
      const sent = await chat.sendToUser({
        userId: "trace-offline",
        idempotencyKey: "api-traced",
        body: "by api",
      });
      const method = "switchboard.api.v1.ChatService/SendToUser";
      const [root] = await spansUntil(
        (s) => s.name === method,
        (spans) => spans.length > 0,
      );
      // A root of its own (no parent), with the gRPC conventions' attributes.
      expect(root!.parentSpanId ?? "").toBe("");
      expect(attr(root!, "rpc.system")).toBe("grpc");
      expect(Number(attr(root!, "rpc.grpc.status_code"))).toBe(0);
      expect(attr(root!, "network.peer.address")).toBe("127.0.0.1");
      // The message's route and its push follow in that trace; the push failed, and says so.
      const trace = await spansUntil(
        (s) => s.traceId === root!.traceId,
        (spans) => spans.some((s) => s.name === "push webhook"),
      );
      expect(trace.map((s) => s.name)).toContain("route");
      const push = trace.find((s) => s.name === "push webhook")!;
      expect(push.status?.code).toBe(2); // ERROR
      expect(attr(push, "error.type")).toBe("failed");
      expect(attr(push, "switchboard.push.result")).toBe("failed");
      expect(sent.message?.seq).toBeGreaterThan(0n);

      // A refusal (where its bot is no member) is the caller's fault: status unset, its reason as
      // error.type.
      const refusal = await chat
        .publish({ conversationId: "dm:trace-x~trace-y", idempotencyKey: "nope", body: "no" })
        .then(
          () => undefined,
          (err: unknown) => err as SwitchboardError,
        );
      expect(refusal).toBeInstanceOf(SwitchboardError);
      const [refused] = await spansUntil(
        (s) => s.name === "switchboard.api.v1.ChatService/Publish",
        (spans) => spans.length > 0,
      );
      expect(refused!.status?.code ?? 0).toBe(0);
      expect(attr(refused!, "error.type")).toBe(refusal!.reason);
      expect(Number(attr(refused!, "rpc.grpc.status_code"))).toBe(refusal!.code);
    } finally {
      chat.close();
    }
  });
});
