/**
 * Web Push in the web client, end to end: the real server configured for Web Push (VAPID key
 * pair, settings in SWITCHBOARD_PUSH_*) sends to the Web Push stand-in, which checks VAPID and
 * decrypts the payload with the subscription's private key, as a browser's push service and the
 * browser would. Headless Chromium reaches no push service, so PushManager hands out a
 * subscription the stand-in minted: that is the only fake. The page turns notifications on from
 * the keyboard, the device is registered, the user offline gets a real notification, the service
 * worker shows a push that DevTools delivers to it and opens its conversation on a click, and
 * turning notifications off or signing out unregisters the device.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser, BrowserContext, Page, Worker } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Provider, PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { grpcClient } from "../../internal/lib/rpc.js";
import { TestPki } from "../helpers/certificates.js";
import { vapidKeys, WebPushStandIn } from "../helpers/push-stand-ins/web-push.js";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer } from "../helpers/server.js";
import { type ClientPage, launchBrowser, openClient, screenshot, signIn, waitForStatus } from "./harness.js";

let server: ServerProcess;
let browser: Browser;
let webPush: WebPushStandIn;
let push: ReturnType<typeof grpcClient<typeof PushService>>;
let router: ReturnType<typeof grpcClient<typeof RouterService>>;
const contexts: BrowserContext[] = [];
/** Errors the service workers logged (the pages' own are each ClientPage's). */
const workerErrors: string[] = [];
const pki = new TestPki();
const files = mkdtempSync(join(tmpdir(), "switchboard-web-push-"));
const vapid = vapidKeys();

beforeAll(async () => {
  const ca = pki.ca("web-push-ca");
  // https on loopback, as push services serve: the server trusts the stand-in's CA.
  webPush = await new WebPushStandIn(vapid.publicKey, pki.issue(ca, { cn: "localhost" })).start();
  const file = (name: string, content: string) => {
    writeFileSync(join(files, name), content, { mode: 0o600 });
    return join(files, name);
  };
  server = await startServer({
    // --grpc-port: the test reads the user's devices from the push service's gRPC API.
    args: ["--dev", "--grpc-port", "0"],
    env: {
      NODE_EXTRA_CA_CERTS: file("stand-in-ca.pem", ca.cert),
      SWITCHBOARD_PUSH_WEBPUSH_VAPID_PUBLIC_KEY: vapid.publicKey,
      SWITCHBOARD_PUSH_WEBPUSH_VAPID_PRIVATE_KEY_FILE: file("vapid.key", vapid.privateKey),
      SWITCHBOARD_PUSH_WEBPUSH_SUBJECT: "mailto:push@switchboard.dev",
      // The stand-in listens on loopback, which subscriptions' endpoints may not name otherwise.
      SWITCHBOARD_PUSH_ALLOW_PRIVATE_ENDPOINTS: "true",
    },
  });
  push = grpcClient(PushService, `127.0.0.1:${server.grpcPort}`);
  router = grpcClient(RouterService, `127.0.0.1:${server.grpcPort}`);
  browser = await launchBrowser();
});

afterAll(async () => {
  for (const c of contexts) await c.close();
  await browser?.close();
  push?.close();
  router?.close();
  await server?.dispose();
  await webPush?.close();
  pki.close();
  rmSync(files, { recursive: true, force: true });
});

/**
 * Replaces PushManager's subscribe and getSubscription in the page (an init script: it runs before
 * the app). The subscription is the stand-in's `token`, or whatever the test put in localStorage
 * under "test:push-token" since (a rotated one); what subscribe was asked, and whether the browser
 * holds a subscription, are kept there too. "test:push-fail" makes subscribe fail as Chromium does
 * when its push service cannot be reached.
 */
function fakePushManager(token: string): void {
  const b64url = (bytes: Uint8Array) =>
    btoa(String.fromCharCode(...bytes))
      .replace(/\+/g, "-")
      .replace(/\//g, "_")
      .replace(/=+$/, "");
  const bytesOf = (value: string) =>
    Uint8Array.from(atob(value.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
  const subscription = (key: string) => {
    const json = JSON.parse(localStorage.getItem("test:push-token") ?? token) as {
      endpoint: string;
      keys: Record<string, string>;
    };
    return {
      endpoint: json.endpoint,
      expirationTime: null,
      options: { userVisibleOnly: true, applicationServerKey: bytesOf(key).buffer },
      getKey: (name: string) => bytesOf(json.keys[name] ?? "").buffer,
      toJSON: () => json,
      unsubscribe: async () => {
        localStorage.removeItem("test:push-subscribed");
        return true;
      },
    };
  };
  PushManager.prototype.subscribe = async (options?: PushSubscriptionOptionsInit) => {
    if (localStorage.getItem("test:push-fail"))
      throw new DOMException("Registration failed - push service error", "AbortError");
    const key = options?.applicationServerKey;
    const keyText = key instanceof Uint8Array ? b64url(key) : String(key);
    localStorage.setItem(
      "test:push-subscribe-options",
      JSON.stringify({ userVisibleOnly: options?.userVisibleOnly, applicationServerKey: keyText }),
    );
    localStorage.setItem("test:push-subscribed", keyText);
    return subscription(keyText) as unknown as PushSubscription;
  };
  PushManager.prototype.getSubscription = async () => {
    const key = localStorage.getItem("test:push-subscribed");
    return (key === null ? null : subscription(key)) as unknown as PushSubscription | null;
  };
}

/**
 * A browser of its own for one person, with the notifications permission given or not; `token`: the
 * subscription its PushManager hands out (the stand-in's).
 */
async function newContext(grantNotifications: boolean): Promise<{ context: BrowserContext; token: string }> {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  contexts.push(context);
  context.on("serviceworker", (worker) =>
    worker.on("console", (m) => {
      if (m.type() === "error") workerErrors.push(m.text());
    }),
  );
  if (grantNotifications) await context.grantPermissions(["notifications"], { origin: server.httpUrl });
  const { token } = webPush.subscribe();
  await context.addInitScript(fakePushManager, token);
  return { context, token };
}

const toggleOf = (page: Page) => page.locator("#push-toggle");
const stored = (page: Page, key: string) => page.evaluate((k) => localStorage.getItem(k), key);

async function waitForToggle(page: Page, text: string): Promise<void> {
  await expect.poll(() => toggleOf(page).isVisible()).toBe(true);
  await expect.poll(() => toggleOf(page).textContent()).toBe(text);
  expect(await toggleOf(page).getAttribute("aria-pressed")).toBe(String(text === "Notifications: on"));
}

/** The user's registered devices as the push service has them: [device id, provider, token]. */
async function devicesOf(userId: string): Promise<Array<[string, Provider, string]>> {
  const { devices } = await push.listDevices({ userId });
  return devices.map((d) => [d.deviceId, d.provider, d.token]);
}

/** The notifications the page's service worker shows. */
function shownNotifications(page: Page) {
  return page.evaluate(async () => {
    const registration = await navigator.serviceWorker.ready;
    return (await registration.getNotifications()).map((n) => ({
      title: n.title,
      body: n.body,
      tag: n.tag,
      data: n.data as unknown,
    }));
  });
}

/**
 * Delivers pushes to the page's service worker through DevTools (ServiceWorker.deliverPushMessage),
 * as the browser does with what its push service hands it.
 */
async function pushDelivery(page: Page): Promise<(payload: unknown) => Promise<void>> {
  // A push to a registration whose worker is not active yet (a reopened page may still be
  // activating it) is dropped by the browser: wait for the active worker first.
  await page.evaluate(async () => {
    await navigator.serviceWorker.ready;
  });
  const cdp = await page.context().newCDPSession(page);
  const registrationId = new Promise<string>((resolve) => {
    cdp.on("ServiceWorker.workerRegistrationUpdated", ({ registrations }) => {
      const ours = registrations.find((r) => r.scopeURL === `${server.httpUrl}/` && !r.isDeleted);
      if (ours) resolve(ours.registrationId);
    });
  });
  // The domain must stay enabled on this session for deliverPushMessage; enabling it lists the
  // registrations.
  await cdp.send("ServiceWorker.enable");
  const id = await registrationId;
  return async (payload) => {
    await cdp.send("ServiceWorker.deliverPushMessage", {
      origin: server.httpUrl,
      registrationId: id,
      data: JSON.stringify(payload),
    });
  };
}

/**
 * Delivers `payload` and waits until the worker shows exactly `expected`. DevTools drops a push now
 * and then while a reopened page's registration settles (CI saw it once in many runs); a push
 * service retries an undelivered push, so this delivers it again on each look that does not find it
 * yet. Pushes of one conversation share a tag, so a second delivery replaces the first: what is
 * shown must still be exactly `expected`.
 */
async function deliverUntilShown(
  page: Page,
  deliverPush: (payload: unknown) => Promise<void>,
  payload: unknown,
  expected: unknown[],
): Promise<void> {
  await deliverPush(payload);
  let looks = 0;
  await expect
    .poll(
      async () => {
        const now = await shownNotifications(page);
        if (++looks % 5 === 0 && JSON.stringify(now) !== JSON.stringify(expected)) await deliverPush(payload);
        return now;
      },
      { timeout: 15_000 },
    )
    .toEqual(expected);
}

/** The app's service worker, as Playwright attached to it (it starts again for a push). */
async function serviceWorkerOf(context: BrowserContext): Promise<Worker> {
  const running = () => context.serviceWorkers().find((w) => w.url() === `${server.httpUrl}/sw.js`);
  await expect.poll(() => running() !== undefined).toBe(true);
  return running()!;
}

describe("Web Push in the web client", () => {
  it("offers the server's VAPID key in /v1/connect", async () => {
    const connect = (await (await fetch(`${server.httpUrl}/v1/connect`)).json()) as Record<string, unknown>;
    expect(connect.web_push_public_key).toBe(vapid.publicKey);
  });

  it("registers the browser, notifies the user offline, shows pushes and unregisters", async () => {
    const { context, token: first } = await newContext(true);
    const alice = await signIn(context, server.httpUrl, "alice");
    const pages: ClientPage[] = [alice];
    const page = alice.page;

    // Keyboard only: the toggle keeps the focus through the change.
    await waitForToggle(page, "Notifications: off");
    await toggleOf(page).focus();
    await page.keyboard.press("Enter");
    await waitForToggle(page, "Notifications: on");
    expect(await page.evaluate(() => document.activeElement?.id)).toBe("push-toggle");
    expect(JSON.parse((await stored(page, "test:push-subscribe-options")) ?? "null")).toEqual({
      userVisibleOnly: true,
      applicationServerKey: vapid.publicKey,
    });
    const deviceId = (await stored(page, "switchboard:push-device")) ?? "";
    expect(deviceId).toMatch(/^web-[0-9a-f-]{36}$/);
    expect(await devicesOf("alice")).toEqual([[deviceId, Provider.WEBPUSH, first]]);
    await screenshot(page, "web-push-on");

    // The browser's subscription rotates while the page is closed; alice has no device connected.
    const rotated = webPush.subscribe();
    await page.evaluate((t) => localStorage.setItem("test:push-token", t), rotated.token);
    await page.close();
    await expect.poll(async () => (await router.lookupUser({ userId: "alice" })).sessions.length).toBe(0);
    const bob = await RawClient.connect(server.url, { token: await devToken(server.dataDir, "bob") });
    const ack = expectCase(
      await bob.request({
        case: "send",
        value: { target: { case: "toUser", value: "alice" }, clientMsgId: "wp-1", body: "are you there?" },
      }),
      "ack",
    );
    bob.close();
    const firstId = JSON.parse(first).endpoint.split("/").pop() as string;
    await expect.poll(() => webPush.delivered.filter((d) => d.subscriptionId === firstId).length).toBe(1);
    const delivered = webPush.delivered.find((d) => d.subscriptionId === firstId)!.payload;
    expect(delivered).toMatchObject({
      title: "bob",
      body: "are you there?",
      conversation_id: ack.conversationId,
      message_count: 1,
    });
    expect(webPush.script.violations).toEqual([]);

    // Back: the remembered session opens, and the rotated subscription is registered in its place.
    const again = await openClient(context, server.httpUrl);
    pages.push(again);
    await waitForStatus(again.page, "Online");
    await waitForToggle(again.page, "Notifications: on");
    await expect.poll(() => devicesOf("alice")).toEqual([[deviceId, Provider.WEBPUSH, rotated.token]]);

    // What the server sent, delivered to the service worker by DevTools: it shows the notification,
    // tagged with the conversation; the burst's summary replaces it.
    const deliverPush = await pushDelivery(again.page);
    const shown = {
      title: "bob",
      body: "are you there?",
      tag: ack.conversationId,
      data: { conversationId: ack.conversationId, notificationId: delivered.notification_id },
    };
    await deliverUntilShown(again.page, deliverPush, delivered, [shown]);
    const summary = { ...delivered, body: "third in a row", message_count: 3, notification_id: "summary-1" };
    await deliverUntilShown(again.page, deliverPush, summary, [
      { ...shown, body: "third in a row", data: { ...shown.data, notificationId: "summary-1" } },
    ]);

    // A click (DevTools cannot click a notification: the worker dispatches the event itself) closes
    // the notification and has the open page show its conversation.
    expect(await again.page.locator("#conversation").isHidden()).toBe(true);
    const worker = await serviceWorkerOf(context);
    await worker.evaluate(async () => {
      const scope = self as unknown as {
        registration: ServiceWorkerRegistration;
        NotificationEvent: new (type: string, init: { notification: Notification }) => Event;
        dispatchEvent(event: Event): boolean;
      };
      const [notification] = await scope.registration.getNotifications();
      if (!notification) throw new Error("the service worker shows no notification");
      const click = new scope.NotificationEvent("notificationclick", { notification });
      // Only the browser's own events may extend the worker's life (waitUntil throws on others);
      // the handler's work runs all the same.
      Object.defineProperty(click, "waitUntil", { value: () => undefined });
      scope.dispatchEvent(click);
    });
    await expect.poll(() => again.page.locator("#conversation-title").textContent()).toBe("bob");
    await expect.poll(() => shownNotifications(again.page)).toEqual([]);
    await screenshot(again.page, "web-push-clicked");

    // A new window the worker would open links to the conversation.
    const linked = await openClient(
      context,
      server.httpUrl,
      `/#conversation=${encodeURIComponent(ack.conversationId)}`,
    );
    pages.push(linked);
    await expect.poll(() => linked.page.locator("#conversation-title").textContent()).toBe("bob");
    await linked.page.close();

    // Off (a click this time): the device is gone and the subscription ended.
    await toggleOf(again.page).click();
    await waitForToggle(again.page, "Notifications: off");
    expect(await devicesOf("alice")).toEqual([]);
    expect(await stored(again.page, "test:push-subscribed")).toBeNull();

    // On again, then signing out unregisters it.
    await toggleOf(again.page).click();
    await waitForToggle(again.page, "Notifications: on");
    expect(await devicesOf("alice")).toHaveLength(1);
    await again.page.getByRole("button", { name: "Sign out" }).click();
    await expect.poll(() => again.page.locator("#sign-in").isVisible()).toBe(true);
    expect(await devicesOf("alice")).toEqual([]);
    expect(await stored(again.page, "test:push-subscribed")).toBeNull();

    for (const p of pages) expect(p.consoleErrors).toEqual([]);
    expect(workerErrors).toEqual([]);
  });

  it("says why notifications could not be turned on", async () => {
    // No permission: the browser denies it (headless Chromium asks nobody).
    const denied = await signIn((await newContext(false)).context, server.httpUrl, "carol");
    await waitForToggle(denied.page, "Notifications: off");
    await toggleOf(denied.page).click();
    await expect
      .poll(() => denied.page.locator("#push-error").textContent())
      .toBe(
        "Could not turn notifications on: the browser blocks them for this site; allow them in its site settings",
      );
    await waitForToggle(denied.page, "Notifications: off");

    // Permission, but no push service.
    const failing = await signIn((await newContext(true)).context, server.httpUrl, "dave");
    await failing.page.evaluate(() => localStorage.setItem("test:push-fail", "1"));
    await waitForToggle(failing.page, "Notifications: off");
    await toggleOf(failing.page).click();
    await expect
      .poll(() => failing.page.locator("#push-error").textContent())
      .toBe("Could not turn notifications on: Registration failed - push service error");
    await waitForToggle(failing.page, "Notifications: off");
    await screenshot(failing.page, "web-push-error");
    expect(await devicesOf("carol")).toEqual([]);
    expect(await devicesOf("dave")).toEqual([]);
    for (const p of [denied, failing]) expect(p.consoleErrors).toEqual([]);
    expect(workerErrors).toEqual([]);
  });
});
