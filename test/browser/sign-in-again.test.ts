/**
 * Signing in again on the same page after a refused attempt: the refused attempt leaves nothing
 * behind (its controls' handlers would otherwise run first: empty the composer, toggle panels twice),
 * so the chat that opens next works like any other.
 */
import type { Browser, BrowserContext } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type IncomingMessage as SdkMessage, SwitchboardClient } from "../../sdk/src/index.js";
import { devToken, type ServerProcess, startServer } from "../helpers/server.js";
import {
  type ClientPage,
  checkPagesAndClose,
  launchBrowser,
  sendMessage,
  shownMessages,
  signIn,
  startChat,
  waitForStatus,
  watchPage,
} from "./harness.js";

let server: ServerProcess;
let browser: Browser;
const contexts: BrowserContext[] = [];
const clients: ClientPage[] = [];

beforeAll(async () => {
  server = await startServer({ args: ["--dev"] });
  browser = await launchBrowser();
});
afterAll(async () => {
  for (const c of contexts) await c.close();
  await browser?.close();
  await server?.dispose();
});

/** A token with alice's claims that the server did not sign: the page takes it, the server refuses it. */
function forgedToken(user: string, exp = Math.floor(Date.now() / 1000) + 3600): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: user, exp })}.AAAA`;
}

describe("signing in again after a refused sign-in", () => {
  it("sends messages from the chat that opens next", async () => {
    const bob = new SwitchboardClient({ url: server.url, token: await devToken(server.dataDir, "bob") });
    const bobReceived: string[] = [];
    bob.on("message", ({ message }: SdkMessage) => {
      bobReceived.push(`${message.sender}: ${message.body}`);
    });
    await bob.connect();

    const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
    contexts.push(context);
    // Alice used this browser before (her inbox position is remembered), and signed out.
    const alice = await signIn(context, server.httpUrl, "alice");
    clients.push(alice);
    await alice.page.getByRole("button", { name: "Sign out" }).click();
    await expect.poll(() => alice.page.locator("#sign-in").isVisible()).toBe(true);

    // A token the server refuses: the chat opens, fails, and the form comes back saying why.
    await alice.page.getByLabel("Or paste a token (JWT)").fill(forgedToken("alice"));
    await alice.page.getByRole("button", { name: "Sign in with this token" }).click();
    await expect.poll(() => alice.page.locator("#sign-in-error").textContent()).not.toBe("");
    expect(await alice.page.locator("#sign-in").isVisible()).toBe(true);

    await alice.page.getByLabel("User id", { exact: true }).fill("alice");
    await alice.page.getByRole("button", { name: "Sign in with a dev token" }).click();
    await waitForStatus(alice.page, "Online");
    await startChat(alice.page, "bob");
    await sendMessage(alice.page, "after signing in again");
    await expect.poll(() => bobReceived).toEqual(["alice: after signing in again"]);
    await expect.poll(() => shownMessages(alice.page)).toEqual(["after signing in again"]);
    await bob.close();
    await checkPagesAndClose(clients, contexts);
  });

  it("forgets a remembered session whose pasted token expired, saying so once", async () => {
    const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
    contexts.push(context);
    const page = await context.newPage();
    const client = watchPage(page, "alice");
    clients.push(client);
    await page.goto(`${server.httpUrl}/`);
    const expired = forgedToken("alice", 1);
    await page.evaluate(
      ([server, token]) =>
        localStorage.setItem(
          "switchboard:session",
          JSON.stringify({
            server,
            gatewayUrl: `${server.replace(/^http/, "ws")}/ws`,
            userId: "alice",
            token,
            source: "pasted",
          }),
        ),
      [server.httpUrl, expired] as const,
    );
    await page.reload();
    await expect
      .poll(() => page.locator("#sign-in-error").textContent())
      .toBe("Your session ended (the token has expired): sign in again.");
    expect(await page.evaluate(() => localStorage.getItem("switchboard:session"))).toBeNull();
    // The next load shows the form, with nothing to say.
    await page.reload();
    await expect.poll(() => page.locator("#sign-in").isVisible()).toBe(true);
    expect(await page.locator("#sign-in-error").textContent()).toBe("");
    await checkPagesAndClose(clients, contexts);
  });

  it("says which server it could not reach for a dev token, not only the browser's 'Failed to fetch'", async () => {
    const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
    contexts.push(context);
    // Not watched for console errors: the browser logs the refused request, as it should.
    const page = await context.newPage();
    const nowhere = "http://127.0.0.1:9"; // nothing listens there
    await page.goto(`${server.httpUrl}/?server=${encodeURIComponent(nowhere)}`);
    await page.getByLabel("User id", { exact: true }).fill("alice");
    await page.getByRole("button", { name: "Sign in with a dev token" }).click();
    await page.getByRole("button", { name: `Sign in to ${nowhere}` }).click();
    await expect
      .poll(() => page.locator("#sign-in-error").textContent(), { timeout: 20_000 })
      .toMatch(/^could not reach http:\/\/127\.0\.0\.1:9 for a token \(.+\): is the server running/);
    await context.close();
    contexts.splice(contexts.indexOf(context), 1);
  });
});
