/**
 * With tracing on, one send makes one connected trace that joins the client's own trace and reaches
 * every gateway delivery, on either backend (distributed: across the Kafka hops, with the batch spans
 * linked to it). The spans are received by an OTLP/HTTP (JSON) receiver in this test, as a collector
 * would receive them.
 */
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spanAttribute as attr, OtlpReceiver, type OtlpSpan } from "../helpers/otlp-receiver.js";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer, testBackend } from "../helpers/server.js";

let receiver: OtlpReceiver;
let server: ServerProcess;

beforeAll(async () => {
  receiver = await OtlpReceiver.start();
  server = await startServer({ env: receiver.env });
});
afterAll(async () => {
  await server?.dispose();
  receiver?.close();
});

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
});
