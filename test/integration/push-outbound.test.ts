/**
 * Where push requests may go, as a process configures them (pushFromConfig): push.webhookUrl is
 * trusted as that one URL and only for its own jobs, never for a user's webhook device on the same
 * host; and no push request follows a redirect, so an address that answers 307 cannot send the
 * notification on to a server inside the network.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { EmbeddedBackends } from "../../internal/backends/embedded/index.js";
import { loadConfig } from "../../internal/lib/config.js";
import { createLogger } from "../../internal/lib/log.js";
import { createMetrics, type Metrics } from "../../internal/lib/metrics.js";
import { pushFromConfig } from "../../internal/push/from-config.js";
import type { Push } from "../../internal/push/service.js";

/** An HTTP server on loopback that records the paths it was asked for and answers per path. */
async function server(answer: (path: string) => { status: number; location?: string }) {
  const paths: string[] = [];
  const s: Server = createServer((req, res) => {
    paths.push(req.url ?? "");
    req.resume().on("end", () => {
      const { status, location } = answer(req.url ?? "");
      res.writeHead(status, location ? { location } : {}).end();
    });
  });
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  return { paths, origin: `http://127.0.0.1:${(s.address() as AddressInfo).port}`, close: () => s.close() };
}

let dataDir: string;
let backends: EmbeddedBackends;
/** Q: a service inside the network no notification may reach. */
let inside: Awaited<ReturnType<typeof server>>;
/** P: the operator's webhook (/hook), and on the same origin paths that redirect to Q. */
let hooks: Awaited<ReturnType<typeof server>>;
const pushes: Push[] = [];

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "switchboard-push-outbound-"));
  backends = new EmbeddedBackends({ dataDir });
  inside = await server(() => ({ status: 200 }));
  hooks = await server((path) =>
    path === "/hook" ? { status: 200 } : { status: 307, location: `${inside.origin}/stolen${path}` },
  );
});

afterEach(async () => {
  await Promise.all(pushes.splice(0).map((p) => p.close()));
});

afterAll(async () => {
  inside?.close();
  hooks?.close();
  await backends?.close();
  rmSync(dataDir, { recursive: true, force: true });
});

function push(metrics: Metrics, settings: Record<string, string>): Push {
  const config = loadConfig({}, { "push.collapseWindowMs": "0", "push.attemptsMax": "2", ...settings });
  const p = pushFromConfig(
    config,
    backends.devices,
    backends.settings,
    {},
    createLogger({ test: "push-outbound" }),
    metrics,
  );
  pushes.push(p);
  return p;
}

const settled = (p: Push) => vi.waitFor(() => expect(p.pending).toBe(0), { timeout: 10_000, interval: 10 });

async function counted(metrics: Metrics, result: string): Promise<number> {
  const { values } = await metrics.pushNotifications.get();
  return values.find((v) => v.labels.provider === "webhook" && v.labels.result === result)?.value ?? 0;
}

let users = 0;
async function userWithWebhook(url: string): Promise<string> {
  const userId = `outbound-${++users}`;
  await backends.devices.put({
    userId,
    deviceId: "crm",
    provider: "webhook",
    token: url,
    registeredAtMs: Date.now(),
  });
  return userId;
}

const notification = (userId: string) => ({ userId, conversationId: "dm:1", title: "t", body: "b" });

describe("push requests' destinations", () => {
  it("trusts push.webhookUrl for its own jobs only: a user's device on its host, or at that very URL, is refused as a private address", async () => {
    const metrics = createMetrics();
    const p = push(metrics, { "push.webhookUrl": `${hooks.origin}/hook` });
    // A name that resolves to loopback passes registration; stored directly here.
    const other = await userWithWebhook(`${hooks.origin}/other`);
    const copycat = await userWithWebhook(`${hooks.origin}/hook`);
    const before = hooks.paths.length;
    expect(await p.notify(notification(other))).toBe(1);
    expect(await p.notify(notification(copycat))).toBe(1);
    expect(await p.notify(notification("outbound-no-device"))).toBe(1); // to push.webhookUrl
    await settled(p);
    expect(hooks.paths.slice(before)).toEqual(["/hook"]);
    expect(inside.paths).toEqual([]);
    // Refused by the guard: the devices are pruned as unreachable.
    expect(await backends.devices.list(other)).toEqual([]);
    expect(await backends.devices.list(copycat)).toEqual([]);
    expect(await counted(metrics, "pruned")).toBe(2);
    expect(await counted(metrics, "sent")).toBe(1);
  });

  it("follows no redirect: a user's URL (private addresses allowed) or push.webhookUrl answering 307 fails, the target is never asked", async () => {
    const metrics = createMetrics();
    const p = push(metrics, {
      "push.webhookUrl": `${hooks.origin}/moved`,
      "push.allowPrivateEndpoints": "true",
    });
    const user = await userWithWebhook(`${hooks.origin}/other`);
    const before = hooks.paths.length;
    await p.notify(notification(user));
    await p.notify(notification("outbound-no-device"));
    await settled(p);
    expect(hooks.paths.slice(before).sort()).toEqual(["/moved", "/other"]);
    expect(inside.paths).toEqual([]);
    expect(await counted(metrics, "failed")).toBe(2);
  });
});
