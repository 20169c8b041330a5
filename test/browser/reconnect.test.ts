/**
 * The web client through a server crash: the gateway is killed with SIGKILL mid-conversation and
 * restarted on the same data. The pages must say so ("Reconnecting…", then "Catching up…" while a resync
 * lasts longer than a frame), keep what was composed meanwhile and send it once the server is back, and
 * end with every message shown exactly once, in the same order on both sides.
 */
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ServerProcess, startServer } from "../helpers/server.js";
import {
  type ClientPage,
  conversationEntry,
  deliveryOf,
  launchBrowser,
  noticeOf,
  openConversation,
  screenshot,
  sendMessage,
  shownMessages,
  signIn,
  startChat,
  waitForStatus,
} from "./harness.js";

let server: ServerProcess;
let browser: Browser;
const contexts: BrowserContext[] = [];

beforeAll(async () => {
  server = await startServer({ args: ["--dev"] });
  browser = await launchBrowser();
});
afterAll(async () => {
  for (const c of contexts) await c.close();
  await browser?.close();
  await server?.dispose();
});

async function person(user: string): Promise<ClientPage> {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  contexts.push(context);
  return signIn(context, server.httpUrl, user);
}

/** Records every connection status the page shows, however briefly. */
async function recordStatuses(client: ClientPage): Promise<() => Promise<string[]>> {
  await client.page.evaluate(() => {
    const seen: string[] = [];
    const status = document.getElementById("connection")!;
    new MutationObserver(() => seen.push(status.textContent ?? "")).observe(status, {
      childList: true,
      characterData: true,
      subtree: true,
    });
    (window as unknown as { seenStatuses: string[] }).seenStatuses = seen;
  });
  return () => client.page.evaluate(() => (window as unknown as { seenStatuses: string[] }).seenStatuses);
}

/**
 * While the server is down the browser itself logs each refused WebSocket attempt; those are the
 * only console errors allowed, and only in this test.
 */
function unexpectedErrors(client: ClientPage): string[] {
  return client.consoleErrors.filter(
    (e) => !/^WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/ws' failed/.test(e),
  );
}

describe("a server crash mid-conversation", () => {
  it("reconnects, catches up and delivers what was composed offline, each message once", async () => {
    const alice = await person("alice");
    const bob = await person("bob");
    await startChat(alice.page, bob.user);
    await sendMessage(alice.page, "before the crash");
    await openConversation(bob.page, alice.user);
    await sendMessage(bob.page, "got it");
    const before = ["before the crash", "got it"];
    for (const c of [alice, bob]) await expect.poll(() => shownMessages(c.page)).toEqual(before);
    const aliceStatuses = await recordStatuses(alice);
    // Bob's page is kept by the service worker, so that it opens while the server is down.
    await expect.poll(() => bob.page.evaluate(() => navigator.serviceWorker.controller !== null)).toBe(true);

    await server.kill();
    await waitForStatus(alice.page, "Reconnecting…");
    await waitForStatus(bob.page, "Reconnecting…");
    // Composed while the server is down: shown at once, marked queued.
    await sendMessage(alice.page, "sent while down 1");
    await sendMessage(alice.page, "sent while down 2");
    await sendMessage(bob.page, "bob while down");
    await expect.poll(() => deliveryOf(alice.page, "sent while down 2")).toBe("Queued (offline)");
    // Bob even reloads his page meanwhile: it opens signed in, still offline, his message still queued.
    await bob.page.reload();
    await waitForStatus(bob.page, "Reconnecting…");
    await openConversation(bob.page, alice.user);
    await expect.poll(() => deliveryOf(bob.page, "bob while down")).toBe("Queued (offline)");
    // Cut off, the page cannot know who is online, so it claims nothing of anyone.
    expect(await alice.page.locator("#conversation-presence").textContent()).toBe("");
    expect(
      await conversationEntry(alice.page, bob.user).locator(".presence").getAttribute("aria-label"),
    ).toBe(`${bob.user}: not known whether online`);
    await screenshot(alice.page, "reconnecting");

    server = await server.restart();
    await waitForStatus(alice.page, "Online");
    await waitForStatus(bob.page, "Online");
    // What the page painted, in order, from the drop on: "Reconnecting…", then "Online" at the end,
    // with "Catching up…" before it when the resync outlasted a frame (the page draws once per
    // animation frame, and a short resync ends within one).
    const seen = await aliceStatuses();
    const afterDrop = seen.slice(seen.indexOf("Reconnecting…"));
    expect(afterDrop[0]).toBe("Reconnecting…");
    expect(afterDrop.at(-1)).toBe("Online");
    expect(afterDrop.filter((s) => !["Reconnecting…", "Catching up…", "Online"].includes(s))).toEqual([]);
    const catchingUp = afterDrop.indexOf("Catching up…");
    if (catchingUp >= 0) expect(afterDrop.indexOf("Online")).toBeGreaterThan(catchingUp);

    // Each side's own queued messages come first on its page until the other's arrive; both end
    // with the same five messages, each once, in the server's order (by seq).
    const bySeq = (page: Page) =>
      page
        .locator("#message-list .message")
        .evaluateAll((items) =>
          items.map((li) => `${li.getAttribute("data-seq")}:${li.querySelector(".body")?.textContent}`),
        );
    await expect.poll(async () => (await shownMessages(alice.page)).length, { timeout: 20_000 }).toBe(5);
    await expect.poll(async () => (await shownMessages(bob.page)).length, { timeout: 20_000 }).toBe(5);
    await expect.poll(() => bySeq(bob.page)).toEqual(await bySeq(alice.page));
    const shown = await shownMessages(alice.page);
    expect(shown.slice(0, 2)).toEqual(before);
    expect([...shown].sort()).toEqual(
      [...before, "sent while down 1", "sent while down 2", "bob while down"].sort(),
    );
    expect(shown.indexOf("sent while down 1")).toBeLessThan(shown.indexOf("sent while down 2"));
    for (const seq of await bySeq(alice.page)) expect(seq).toMatch(/^[1-5]:/);
    // Bob has the conversation open: alice's queued messages end up read.
    await expect.poll(() => deliveryOf(alice.page, "sent while down 2")).toBe("Read");
    await screenshot(alice.page, "after-restart");

    for (const c of [alice, bob]) {
      expect(unexpectedErrors(c), `console errors of ${c.user}`).toEqual([]);
      expect(await noticeOf(c.page), `error shown to ${c.user}`).toBe("");
    }
  });
});
