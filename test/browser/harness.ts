/**
 * What the browser tests share: Debian's Chromium driven by playwright-core, one browser context
 * per user (its own storage, like another person's browser), a signed-in page, and the page's
 * console errors, which every test expects to be none.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { type Browser, type BrowserContext, chromium, type Locator, type Page } from "playwright-core";
import { expect } from "vitest";
import { repoRoot } from "../helpers/server.js";

/** Where screenshots go: a test artifact, ignored by git. */
export const artifactsDir = join(repoRoot, "test-results", "browser");

/**
 * The network of a test machine is closed: without these flags Chromium keeps dialling Google's
 * services and fills its log with refused connections. Playwright gives every launch a fresh
 * profile directory of its own (the equivalent of a fresh --user-data-dir).
 */
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Debian's chromium package (installed by test/infra/chromium/up.sh, which global-setup.ts runs). */
export const CHROMIUM_PATH = "/usr/bin/chromium";

export function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
}

/** A page of the web client, with the console errors and uncaught exceptions it produced. */
export interface ClientPage {
  page: Page;
  user: string;
  consoleErrors: string[];
  /**
   * What the page did that a failed test should show: its console (any level) and its WebSockets
   * opening and closing, each with the time since the page opened. Bounded (the newest kept).
   */
  timeline: string[];
}

const TIMELINE_MAX = 200;

/** Opens the client at `path` (e.g. with a fragment) of the server at `httpUrl`. */
export async function openClient(context: BrowserContext, httpUrl: string, path = "/"): Promise<ClientPage> {
  const page = await context.newPage();
  const client = watchPage(page, "");
  await page.goto(`${httpUrl}${path}`);
  return client;
}

/** Records what `page` does from now on (its console errors and timeline) as `user`'s page. */
export function watchPage(page: Page, user: string): ClientPage {
  const consoleErrors: string[] = [];
  const timeline: string[] = [];
  const opened = Date.now();
  const note = (what: string) => {
    timeline.push(`+${Date.now() - opened} ms ${what}`);
    if (timeline.length > TIMELINE_MAX) timeline.shift();
  };
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
    note(`console.${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => {
    consoleErrors.push(`uncaught: ${e.message}`);
    note(`uncaught: ${e.message}`);
  });
  page.on("websocket", (ws) => {
    note(`websocket open ${ws.url()}`);
    ws.on("close", () => note(`websocket closed ${ws.url()}`));
  });
  return { page, user, consoleErrors, timeline };
}

/** Signs in with a dev token and waits until the client is live (synced). */
export async function signIn(context: BrowserContext, httpUrl: string, user: string): Promise<ClientPage> {
  const client = await openClient(context, httpUrl);
  await client.page.getByLabel("User id", { exact: true }).fill(user);
  await client.page.getByRole("button", { name: "Sign in with a dev token" }).click();
  await waitForStatus(client.page, "Online");
  return { ...client, user };
}

/** What the page told the user went wrong (a refused request); "" when nothing did. */
export async function noticeOf(page: Page): Promise<string> {
  return (await page.locator("#notice").textContent()) ?? "";
}

/**
 * What every test of a file ends with: no console error and no error notice on any of its pages
 * (checked after each test, so the test that caused one is the one that fails), then its browser
 * contexts closed. Empties both lists for the next test.
 */
export async function checkPagesAndClose(
  clients: ClientPage[],
  contexts: BrowserContext[],
  failed?: FailedRun,
): Promise<void> {
  if (failed?.task.result?.state === "fail") await describeFailure(clients, failed);
  for (const c of clients) {
    expect(c.consoleErrors, `console errors of ${c.user}`).toEqual([]);
    if (!c.page.isClosed()) expect(await noticeOf(c.page), `error shown to ${c.user}`).toBe("");
  }
  for (const context of contexts) await context.close();
  contexts.length = 0;
  clients.length = 0;
}

/** What a failed test's pages and server are asked for: the test, and the server's log. */
export interface FailedRun {
  task: { name: string; result?: { state?: string } };
  serverLog?: () => string;
}

/**
 * Prints what each page showed and did, and the server's warnings and errors, for a test that
 * failed: a run on a loaded CI machine is not repeated at will, so it must explain itself.
 */
async function describeFailure(clients: ClientPage[], { task, serverLog }: FailedRun): Promise<void> {
  const parts = [`"${task.name}" failed; what its pages and server did:`];
  for (const c of clients) {
    const shown = c.page.isClosed()
      ? "closed"
      : await c.page
          .evaluate(() => ({
            connection: document.getElementById("connection")?.textContent,
            notice: document.getElementById("notice")?.textContent,
            title: document.getElementById("conversation-title")?.textContent,
          }))
          .then((s) => JSON.stringify(s))
          .catch((err: unknown) => `unreadable (${String(err)})`);
    parts.push(`page of ${c.user || "(not signed in)"}: ${shown}`, ...c.timeline.map((line) => `  ${line}`));
  }
  const warnings = (serverLog?.() ?? "")
    .split("\n")
    .filter((line) => /"level":"(warn|error|fatal)"/.test(line));
  parts.push(
    `server warnings and errors (${warnings.length}):`,
    ...warnings.slice(-50).map((line) => `  ${line}`),
  );
  console.log(parts.join("\n"));
}

/** Waits for a connection status; a reconnect may take the SDK's longest backoff (10 s) and a sync. */
export async function waitForStatus(page: Page, text: string): Promise<void> {
  await expect.poll(() => page.locator("#connection").textContent(), { timeout: 20_000 }).toBe(text);
}

export function conversationEntry(page: Page, title: string): Locator {
  return page.locator("#conversation-list .conversation").filter({
    has: page.locator(".conversation-title", { hasText: new RegExp(`^${title}$`) }),
  });
}

/** The unread badge of a conversation in the list ("" when there is none). */
export async function unreadBadge(page: Page, title: string): Promise<string> {
  const badge = conversationEntry(page, title).locator(".unread");
  return (await badge.count()) === 0 ? "" : ((await badge.textContent()) ?? "");
}

export async function openConversation(page: Page, title: string): Promise<void> {
  await conversationEntry(page, title).click();
  await expect.poll(() => page.locator("#conversation-title").textContent()).toBe(title);
}

export async function startChat(page: Page, peer: string): Promise<void> {
  await page.getByLabel("Chat with").fill(peer);
  await page.getByRole("button", { name: "Open", exact: true }).click();
  await expect.poll(() => page.locator("#conversation-title").textContent()).toBe(peer);
}

export async function sendMessage(page: Page, text: string): Promise<void> {
  await page.getByLabel("Message", { exact: true }).fill(text);
  await page.getByLabel("Message", { exact: true }).press("Enter");
}

/** The bodies of the messages shown in the open conversation, oldest first. */
export function shownMessages(page: Page): Promise<string[]> {
  return page.locator("#message-list .message .body").allTextContents();
}

/** The delivery state shown on the user's own message with this body ("Sent", "Read", …). */
export async function deliveryOf(page: Page, body: string): Promise<string> {
  const state = page.locator("#message-list .message.mine").filter({ hasText: body }).locator(".delivery");
  return (await state.count()) === 0 ? "" : ((await state.textContent()) ?? "");
}

export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(artifactsDir, { recursive: true });
  await page.screenshot({ path: join(artifactsDir, `${name}.png`) });
}
