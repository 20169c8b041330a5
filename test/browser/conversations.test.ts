/**
 * The reference web client in Chromium, two and three people each in a browser context of their
 * own, against a real `switchboard start --dev`: 1:1 and group conversations, unread counts, read
 * receipts, typing, presence, history paging and two tabs of one user. Every page must end without
 * a console error.
 */
import type { Browser, BrowserContext } from "playwright-core";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { SwitchboardClient } from "../../sdk/src/index.js";
import { devToken, type ServerProcess, startServer } from "../helpers/server.js";
import {
  type ClientPage,
  checkPagesAndClose,
  conversationEntry,
  deliveryOf,
  launchBrowser,
  openConversation,
  screenshot,
  sendMessage,
  shownMessages,
  signIn,
  startChat,
  unreadBadge,
  waitForStatus,
  watchPage,
} from "./harness.js";

/** A short grace period, so "offline" shows within seconds of the last tab closing. */
const OFFLINE_AFTER_MS = 1_500;

let server: ServerProcess;
let browser: Browser;
const contexts: BrowserContext[] = [];
const clients: ClientPage[] = [];
let userCount = 0;
const usedNames = new Set<string>();

beforeAll(async () => {
  server = await startServer({
    args: ["--dev"],
    env: {
      SWITCHBOARD_PRESENCE_OFFLINE_AFTER_MS: String(OFFLINE_AFTER_MS),
      SWITCHBOARD_PRESENCE_HEARTBEAT_INTERVAL_MS: "500",
    },
  });
  browser = await launchBrowser();
});
afterAll(async () => {
  await browser?.close();
  await server?.dispose();
});
afterEach(({ task }) => checkPagesAndClose(clients, contexts, { task, serverLog: () => server.stderr() }));

/**
 * A user id no earlier test used (the server is shared by the whole file): the plain name the first
 * time, so the first test's screenshots read naturally.
 */
function userId(name: string): string {
  userCount++;
  if (usedNames.has(name)) return `${name}${userCount}`;
  usedNames.add(name);
  return name;
}

async function person(name: string, viewport = { width: 1100, height: 720 }): Promise<ClientPage> {
  const context = await browser.newContext({ viewport });
  contexts.push(context);
  const client = await signIn(context, server.httpUrl, userId(name));
  clients.push(client);
  return client;
}

describe("1:1 conversations", () => {
  it("shows the chat to both sides with last message, unread count, receipts and typing", async () => {
    const alice = await person("alice");
    const bob = await person("bob");

    await startChat(alice.page, bob.user);
    await sendMessage(alice.page, "hi bob");
    // The one who started the chat sees it in the list too, with the last message.
    await expect.poll(() => conversationEntry(alice.page, bob.user).count()).toBe(1);
    await expect
      .poll(() => conversationEntry(alice.page, bob.user).locator(".conversation-preview").textContent())
      .toBe("You: hi bob");
    await expect.poll(() => unreadBadge(alice.page, bob.user)).toBe("");

    await expect.poll(() => unreadBadge(bob.page, alice.user)).toBe("1");
    await expect
      .poll(() => conversationEntry(bob.page, alice.user).locator(".conversation-preview").textContent())
      .toBe("hi bob");
    // Bob's client received it (delivered) but he has not opened the conversation (not read).
    await expect.poll(() => deliveryOf(alice.page, "hi bob")).toBe("Delivered");
    await sendMessage(alice.page, "are you there?");
    await expect.poll(() => unreadBadge(bob.page, alice.user)).toBe("2");

    await openConversation(bob.page, alice.user);
    await expect.poll(() => shownMessages(bob.page)).toEqual(["hi bob", "are you there?"]);
    await expect.poll(() => unreadBadge(bob.page, alice.user)).toBe("");
    await expect.poll(() => deliveryOf(alice.page, "are you there?")).toBe("Read");
    await expect.poll(() => deliveryOf(alice.page, "hi bob")).toBe("Read");
    // After a reload the page shows the same (from the server's watermarks, not from events).
    await alice.page.reload();
    await waitForStatus(alice.page, "Online");
    await openConversation(alice.page, bob.user);
    await expect.poll(() => deliveryOf(alice.page, "are you there?")).toBe("Read");

    // Typing shows while bob types and clears the moment his message arrives.
    await bob.page.getByLabel("Message", { exact: true }).pressSequentially("hel");
    await expect.poll(() => alice.page.locator("#typing").textContent()).toBe(`${bob.user} is typing…`);
    await bob.page.getByLabel("Message", { exact: true }).pressSequentially("lo alice");
    await bob.page.getByLabel("Message", { exact: true }).press("Enter");
    await expect.poll(() => shownMessages(alice.page)).toEqual(["hi bob", "are you there?", "hello alice"]);
    expect(await alice.page.locator("#typing").textContent()).toBe("");
    await screenshot(alice.page, "conversation");
    await screenshot(bob.page, "conversation-other-side");

    // Typing that stops without a message clears too: bob's client says so after a pause.
    await bob.page.getByLabel("Message", { exact: true }).pressSequentially("thinking");
    await expect.poll(() => alice.page.locator("#typing").textContent()).toBe(`${bob.user} is typing…`);
    await expect.poll(() => alice.page.locator("#typing").textContent(), { timeout: 10_000 }).toBe("");
  });

  it("shows presence: online while the other person has the page open, offline after the grace period", async () => {
    const alice = await person("alice");
    const bob = await person("bob");
    await startChat(alice.page, bob.user);
    await sendMessage(alice.page, "ping");
    const bobsDot = conversationEntry(alice.page, bob.user).locator(".presence");
    await expect.poll(() => bobsDot.getAttribute("aria-label")).toBe(`${bob.user} is online`);
    await expect.poll(() => alice.page.locator("#conversation-presence").textContent()).toBe("online");

    // Bob starts typing and closes his browser: no "stopped typing" will ever come.
    await openConversation(bob.page, alice.user);
    await bob.page.getByLabel("Message", { exact: true }).pressSequentially("wait, I");
    await expect.poll(() => alice.page.locator("#typing").textContent()).toBe(`${bob.user} is typing…`);
    const closedAt = Date.now();
    await contexts[1]!.close();
    contexts.splice(1, 1);
    // Alice's client forgets a typist who went quiet.
    await expect.poll(() => alice.page.locator("#typing").textContent(), { timeout: 10_000 }).toBe("");
    await expect
      .poll(() => bobsDot.getAttribute("aria-label"), { timeout: 10_000 })
      .toBe(`${bob.user} is offline`);
    // Not before the grace period: a reload must not flap.
    expect(Date.now() - closedAt).toBeGreaterThanOrEqual(OFFLINE_AFTER_MS);
    await expect.poll(() => alice.page.locator("#conversation-presence").textContent()).toBe("offline");
  });

  it("pages back through history, and a new device shows the unread count the first one left", async () => {
    const aliceId = userId("alice");
    const bob = userId("bob");
    // Bob writes 45 messages (from an SDK client in Node) before alice first opens the app.
    const sdk = new SwitchboardClient({ url: server.url, token: await devToken(server.dataDir, bob) });
    await sdk.connect();
    for (let i = 1; i <= 45; i++) await sdk.send({ toUser: aliceId }, `m${i}`);
    await sdk.close();
    const context = await browser.newContext();
    contexts.push(context);
    const alice = await signIn(context, server.httpUrl, aliceId);
    clients.push(alice);

    await expect.poll(() => unreadBadge(alice.page, bob)).toBe("45");
    await openConversation(alice.page, bob);
    // The newest page first; older ones as the user scrolls up.
    await expect.poll(async () => (await shownMessages(alice.page)).at(-1)).toBe("m45");
    expect((await shownMessages(alice.page))[0]).not.toBe("m1");
    await alice.page.locator("#messages").evaluate((el) => {
      el.scrollTop = 0;
    });
    const all = Array.from({ length: 45 }, (_, i) => `m${i + 1}`);
    await expect.poll(() => shownMessages(alice.page)).toEqual(all);
    await expect.poll(() => alice.page.locator("#load-older").isHidden()).toBe(true);
    await expect.poll(() => unreadBadge(alice.page, bob)).toBe("");

    // Another device (a fresh browser profile) of alice's: nothing unread, from the server's watermark.
    const otherDevice = await browser.newContext();
    contexts.push(otherDevice);
    const second = await signIn(otherDevice, server.httpUrl, alice.user);
    clients.push(second);
    await expect
      .poll(() => conversationEntry(second.page, bob).locator(".conversation-preview").textContent())
      .toBe("m45");
    expect(await unreadBadge(second.page, bob)).toBe("");
  });
});

describe("groups", () => {
  it("creates a group, counts unread per member, shows read receipts, adds members, lets the owner remove them and one leave", async () => {
    const alice = await person("alice");
    const bob = await person("bob");
    const carol = await person("carol");
    const dave = userId("dave");

    await alice.page.locator("summary", { hasText: "New group" }).click();
    await alice.page.getByLabel("Group name").fill("Launch team");
    await alice.page.getByLabel("Members (comma-separated user ids)").fill(`${bob.user}, ${carol.user}`);
    await alice.page.getByRole("button", { name: "Create group" }).click();
    await expect.poll(() => alice.page.locator("#conversation-title").textContent()).toBe("Launch team");
    await sendMessage(alice.page, "kick-off at 10");
    await sendMessage(alice.page, "bring coffee");

    for (const member of [bob, carol]) {
      await expect.poll(() => unreadBadge(member.page, "Launch team")).toBe("2");
    }
    await expect.poll(() => deliveryOf(alice.page, "bring coffee")).toBe("Delivered");
    await openConversation(carol.page, "Launch team");
    await expect.poll(() => shownMessages(carol.page)).toEqual(["kick-off at 10", "bring coffee"]);
    await expect.poll(() => deliveryOf(alice.page, "bring coffee")).toBe("Read");
    expect(await unreadBadge(bob.page, "Launch team")).toBe("2");

    await carol.page.getByRole("button", { name: "Members" }).click();
    await expect
      .poll(() => carol.page.locator("#member-list .member-name").allTextContents())
      .toEqual([alice.user, bob.user, `${carol.user} (you)`]);
    // Roles: alice created the group and owns it; carol, a member, may add but remove nobody.
    expect(await carol.page.locator("#member-list .member-role").allTextContents()).toEqual(["owner"]);
    expect(await carol.page.locator("#member-list .remove-member").count()).toBe(0);
    await carol.page.getByLabel("Add member").fill(dave);
    await carol.page.getByRole("button", { name: "Add", exact: true }).click();
    await expect
      .poll(() => carol.page.locator("#member-list .member-name").allTextContents())
      .toEqual([alice.user, bob.user, `${carol.user} (you)`, dave]);
    // Presence in the member list: the ones with the app open are online, dave never signed in.
    await expect
      .poll(() =>
        carol.page.locator("#member-list .presence").evaluateAll((dots) => dots.map((d) => d.className)),
      )
      .toEqual(["presence online", "presence online", "presence online", "presence offline"]);
    await screenshot(carol.page, "group");

    // Muting is carol's setting on the server: a reload shows it, and unmuting works the same way.
    await carol.page.getByRole("button", { name: "Mute", exact: true }).click();
    await expect.poll(() => carol.page.locator("#mute-toggle").getAttribute("aria-pressed")).toBe("true");
    await carol.page.reload();
    await expect.poll(() => carol.page.locator("#connection").textContent()).toBe("Online");
    await openConversation(carol.page, "Launch team");
    await expect.poll(() => carol.page.locator("#mute-toggle").textContent()).toBe("Unmute");
    await carol.page.getByRole("button", { name: "Members" }).click();

    await carol.page.getByRole("button", { name: "Leave group" }).click();
    await expect.poll(() => conversationEntry(carol.page, "Launch team").count()).toBe(0);
    await alice.page.getByRole("button", { name: "Members" }).click();
    await expect
      .poll(() => alice.page.locator("#member-list .member-name").allTextContents())
      .toEqual([`${alice.user} (you)`, bob.user, dave]);
    // The owner names an admin.
    await alice.page.getByRole("button", { name: `Make admin ${bob.user}` }).click();
    await expect
      .poll(() => alice.page.locator("#member-list .member-role").allTextContents())
      .toEqual(["owner", "admin"]);
    await expect
      .poll(() => alice.page.getByRole("button", { name: `Remove admin ${bob.user}` }).count())
      .toBe(1);
    // The owner removes members.
    await alice.page.getByRole("button", { name: `Remove ${dave}` }).click();
    await expect
      .poll(() => alice.page.locator("#member-list .member-name").allTextContents())
      .toEqual([`${alice.user} (you)`, bob.user]);
    await expect.poll(() => alice.page.locator("#conversation-presence").textContent()).toBe("2 members");
    await openConversation(bob.page, "Launch team");
    await sendMessage(bob.page, "late but here");
    await expect
      .poll(() => shownMessages(alice.page))
      .toEqual(["kick-off at 10", "bring coffee", "late but here"]);

    // Removal sends no event: bob learns it as soon as he starts typing (the server refuses his
    // typing), and can write no more.
    await alice.page.getByRole("button", { name: `Remove ${bob.user}` }).click();
    await expect
      .poll(() => alice.page.locator("#member-list .member-name").allTextContents())
      .toEqual([`${alice.user} (you)`]);
    await bob.page.getByLabel("Message", { exact: true }).fill("can I still write?");
    await expect
      .poll(() => bob.page.locator("#membership").textContent())
      .toBe("You are no longer a member of this group.");
    expect(await bob.page.getByLabel("Message", { exact: true }).isDisabled()).toBe(true);
    expect(await shownMessages(alice.page)).toEqual(["kick-off at 10", "bring coffee", "late but here"]);
  });
});

describe("one user, two tabs", () => {
  it("keeps both tabs in step: messages, unread counts and what was read", async () => {
    const alice = await person("alice");
    const tab1 = alice;
    const tab2page = await contexts[0]!.newPage();
    const tab2 = watchPage(tab2page, alice.user);
    clients.push(tab2);
    // The second tab opens signed in, as the same user.
    await tab2page.goto(`${server.httpUrl}/`);
    await expect.poll(() => tab2page.locator("#connection").textContent()).toBe("Online");
    expect(await tab2page.locator("#me").textContent()).toBe(alice.user);

    const bob = await person("bob");
    await startChat(bob.page, alice.user);
    await sendMessage(bob.page, "one");
    await sendMessage(bob.page, "two");
    for (const tab of [tab1, tab2]) await expect.poll(() => unreadBadge(tab.page, bob.user)).toBe("2");

    await openConversation(tab1.page, bob.user);
    // Read in one tab is read in the other.
    await expect.poll(() => unreadBadge(tab2.page, bob.user)).toBe("");
    await openConversation(tab2.page, bob.user);
    await sendMessage(tab2.page, "from tab 2");
    await expect.poll(() => shownMessages(tab1.page)).toEqual(["one", "two", "from tab 2"]);
    await expect.poll(() => shownMessages(tab2.page)).toEqual(["one", "two", "from tab 2"]);
    await expect.poll(() => shownMessages(bob.page)).toEqual(["one", "two", "from tab 2"]);

    // Signing out in one tab signs the other out too: it does not stay signed in, nor store its
    // session again when it reconnects.
    await tab2.page.getByRole("button", { name: "Sign out" }).click();
    for (const tab of [tab1, tab2])
      await expect.poll(() => tab.page.locator("#sign-in").isVisible(), { timeout: 10_000 }).toBe(true);
    expect(await tab1.page.evaluate(() => localStorage.getItem("switchboard:session"))).toBeNull();
  });
});

describe("phone-sized screens", () => {
  it("shows the list or the conversation, with a way back", async () => {
    const alice = await person("alice", { width: 390, height: 780 });
    const bob = await person("bob");
    await startChat(bob.page, alice.user);
    await sendMessage(bob.page, "on your phone?");
    await expect.poll(() => unreadBadge(alice.page, bob.user)).toBe("1");
    await screenshot(alice.page, "phone-list");
    await openConversation(alice.page, bob.user);
    expect(await alice.page.locator("#sidebar").isVisible()).toBe(false);
    await expect.poll(() => shownMessages(alice.page)).toEqual(["on your phone?"]);
    await sendMessage(alice.page, "yes");
    await expect.poll(() => deliveryOf(alice.page, "yes")).toBe("Read");
    await screenshot(alice.page, "phone-conversation");
    await alice.page.getByRole("button", { name: "Back to conversations" }).click();
    await expect.poll(() => alice.page.locator("#sidebar").isVisible()).toBe(true);
  });
});
