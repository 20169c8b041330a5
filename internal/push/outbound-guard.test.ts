import { once } from "node:events";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BlockedAddressError, guardedFetch, isPublicAddress, operatorUrlFetch } from "./outbound-guard.js";
import { networkRetry } from "./providers/types.js";
import { WebhookProvider } from "./providers/webhook.js";

describe("isPublicAddress", () => {
  it("accepts public unicast addresses", () => {
    for (const a of ["8.8.8.8", "1.1.1.1", "151.101.1.69", "2606:4700:4700::1111", "2a00:1450:4001::200e"])
      expect(isPublicAddress(a), a).toBe(true);
  });

  it("refuses loopback, private, link-local, shared, multicast, reserved and mapped forms of them", () => {
    for (const a of [
      "127.0.0.1",
      "127.8.9.10",
      "10.1.2.3",
      "172.16.0.1",
      "172.31.255.255",
      "192.168.1.1",
      "169.254.169.254", // cloud metadata
      "100.64.0.1",
      "0.0.0.0",
      "224.0.0.1",
      "255.255.255.255",
      "198.18.0.1",
      "::",
      "::1",
      "fe80::1",
      "fd00::1",
      "fc12:3456::1",
      "ff02::1",
      "::ffff:127.0.0.1",
      "::ffff:7f00:1",
      "::ffff:a9fe:a9fe", // 169.254.169.254
      "not an address",
    ])
      expect(isPublicAddress(a), a).toBe(false);
  });

  it("judges a NAT64 address (64:ff9b::/96) as the IPv4 address the gateway connects it to", () => {
    for (const a of [
      "64:ff9b::a9fe:a9fe", // 169.254.169.254, cloud metadata
      "64:ff9b::169.254.169.254",
      "64:ff9b::a00:7", // 10.0.0.7
      "64:ff9b::7f00:1", // 127.0.0.1
      "64:FF9B:0:0:0:0:C0A8:101", // 192.168.1.1
      "64:ff9b:1::a00:7", // the local-use NAT64 prefix: never public
    ])
      expect(isPublicAddress(a), a).toBe(false);
    // A public IPv4 address behind DNS64/NAT64 (an IPv6-only cluster) stays reachable.
    expect(isPublicAddress("64:ff9b::808:808")).toBe(true);
  });
});

describe("guardedFetch", () => {
  let server: Server;
  let port: number;
  const received: Array<{ method: string; url: string; body: string; signature: string | undefined }> = [];

  beforeAll(async () => {
    server = createServer((req: IncomingMessage, res) => {
      let body = "";
      req.setEncoding("utf8").on("data", (d: string) => (body += d));
      req.on("end", () => {
        received.push({
          method: req.method ?? "",
          url: req.url ?? "",
          body,
          signature: req.headers["x-switchboard-signature"] as string | undefined,
        });
        res.writeHead(429, { "retry-after": "7" }).end("slow down");
      });
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => server.close());

  it("refuses a literal private address and a name that resolves to one, before connecting", async () => {
    const guarded = guardedFetch({ allowPrivate: false });
    const before = received.length;
    await expect(guarded(`http://127.0.0.1:${port}/hook`, { method: "POST", body: "x" })).rejects.toThrow(
      BlockedAddressError,
    );
    await expect(guarded(`http://[::1]:${port}/hook`, { method: "POST", body: "x" })).rejects.toThrow(
      BlockedAddressError,
    );
    await expect(guarded(`http://localhost:${port}/hook`, { method: "POST", body: "x" })).rejects.toThrow(
      /localhost is at (127\.0\.0\.1|::1), an address notifications are never sent to/,
    );
    expect(received.length).toBe(before);
  });

  it("sends through a connection to an allowed address, and hands back the status and headers", async () => {
    // Loopback stands in for a public address here: the predicate is the only thing that differs.
    const guarded = guardedFetch({ allowPrivate: false, addressAllowed: (a) => a === "127.0.0.1" });
    const res = await guarded(`http://localhost:${port}/hook?x=1`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: '{"n":1}',
    });
    expect(res.status).toBe(429);
    expect(res.ok).toBe(false);
    expect(res.headers.get("retry-after")).toBe("7");
    expect(received.at(-1)).toMatchObject({ method: "POST", url: "/hook?x=1", body: '{"n":1}' });
  });

  it("lets the operator's exact URL and, when allowed, every address through", async () => {
    const before = received.length;
    const operator = operatorUrlFetch(`http://127.0.0.1:${port}/configured`);
    expect(
      (await operator(`http://127.0.0.1:${port}/configured`, { method: "POST", body: "a" })).status,
    ).toBe(429);
    // Its origin is not trusted: another path there is not the URL the operator configured.
    await expect(
      operator(`http://127.0.0.1:${port}/elsewhere`, { method: "POST", body: "x" }),
    ).rejects.toThrow(/is not push.webhookUrl/);
    const open = guardedFetch({ allowPrivate: true });
    expect((await open(`http://127.0.0.1:${port}/any`, { method: "POST", body: "b" })).status).toBe(429);
    expect(received.slice(before).map((r) => r.url)).toEqual(["/configured", "/any"]);
  });

  it("makes a webhook device pointing inside the network a pruned token, never a retried one", async () => {
    const before = received.length;
    const webhook = new WebhookProvider({
      signingSecret: "s",
      fetchImpl: guardedFetch({ allowPrivate: false }),
    });
    const outcome = await webhook.send(`http://localhost:${port}/internal`, {
      id: "n1",
      userId: "u",
      conversationId: "c",
      title: "t",
      body: "b",
      messageCount: 1,
      ttlSeconds: 60,
    });
    expect(outcome).toMatchObject({ kind: "prune", reason: expect.stringMatching(/never sent to/) });
    expect(received.length).toBe(before);
    expect(networkRetry("webhook", new Error("ECONNRESET")).kind).toBe("retry");
  });
});
