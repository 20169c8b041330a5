/**
 * The web client for people who do not use a mouse or see less contrast: every control has an
 * accessible name, the main flow works from the keyboard alone, and text meets WCAG AA contrast
 * (4.5:1) against what is behind it.
 */
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ServerProcess, startServer } from "../helpers/server.js";
import {
  deliveryOf,
  launchBrowser,
  openClient,
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

async function newContext(): Promise<BrowserContext> {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  contexts.push(context);
  return context;
}

/** Visible controls without an accessible name (a label, aria-label or text). */
function unnamedControls(page: Page): Promise<string[]> {
  return page.locator("input, textarea, button, [tabindex]").evaluateAll((elements) =>
    elements
      .filter((el) => (el as HTMLElement).offsetParent !== null)
      .filter((el) => {
        const labelled = (el as HTMLInputElement).labels?.length ?? 0;
        const text = el.textContent?.trim() ?? "";
        return labelled === 0 && !el.getAttribute("aria-label") && (el.tagName !== "BUTTON" || text === "");
      })
      .map((el) => el.outerHTML.slice(0, 80)),
  );
}

/** Visible text whose contrast with its background is below AA (4.5:1), with the ratio found. */
function lowContrastText(page: Page): Promise<string[]> {
  return page.evaluate(() => {
    const rgb = (css: string) => (css.match(/[\d.]+/g) ?? []).map(Number);
    const luminance = ([r = 0, g = 0, b = 0]: number[]) => {
      const lin = (c: number) => {
        const s = c / 255;
        return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
      };
      return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
    };
    const background = (el: Element | null): number[] => {
      for (let e = el; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length === 3 || (c[3] ?? 0) > 0) return c.slice(0, 3);
      }
      return [255, 255, 255];
    };
    const failures: string[] = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const el = node.parentElement;
      if (!el || node.textContent?.trim() === "" || el.offsetParent === null) continue;
      const [l1, l2] = [luminance(rgb(getComputedStyle(el).color)), luminance(background(el))];
      const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
      if (ratio < 4.5) failures.push(`${ratio.toFixed(2)}: ${node.textContent?.trim().slice(0, 40)}`);
    }
    return failures;
  });
}

describe("accessibility", () => {
  it("names every control, works from the keyboard alone and keeps text at AA contrast", async () => {
    const bob = await signIn(await newContext(), server.httpUrl, "bob");
    const alice = await openClient(await newContext(), server.httpUrl);
    const page = alice.page;
    await page.getByLabel("User id", { exact: true }).waitFor();
    expect(await unnamedControls(page)).toEqual([]);
    expect(await lowContrastText(page)).toEqual([]);

    // Keyboard only: type the user id and press Enter.
    await page.getByLabel("User id", { exact: true }).focus();
    await page.keyboard.type("alice");
    await page.keyboard.press("Enter");
    await waitForStatus(page, "Online");
    // Open a chat from the keyboard: focus lands in the composer, Enter sends.
    await page.getByLabel("Chat with").focus();
    await page.keyboard.type("bob");
    await page.keyboard.press("Enter");
    await expect.poll(() => page.evaluate(() => document.activeElement?.id)).toBe("composer-input");
    await page.keyboard.type("typed, not clicked");
    await page.keyboard.press("Enter");
    await expect.poll(() => shownMessages(page)).toEqual(["typed, not clicked"]);

    // Bob answers (once alice's message is stored: shown as it is sent, it could still be on its way,
    // and two users' sends are ordered as the server takes them); the conversation in alice's list is
    // a button: Enter opens it.
    await startChat(bob.page, "alice");
    await expect.poll(() => shownMessages(bob.page)).toEqual(["typed, not clicked"]);
    await sendMessage(bob.page, "keyboard works");
    await page.locator("#conversation-list .conversation").first().focus();
    await page.keyboard.press("Enter");
    await expect.poll(() => shownMessages(page)).toEqual(["typed, not clicked", "keyboard works"]);

    expect(await unnamedControls(page)).toEqual([]);
    expect(await lowContrastText(page)).toEqual([]);
    // Landmarks and roles: one main region shown at a time; the log of messages holds a list, whose
    // entries are list items of it (a role on the list itself would orphan them).
    expect(await page.locator("main:visible").count()).toBe(1);
    expect(await page.locator("[role=log] > ol:not([role]) > li").count()).toBe(2);
    // A body laid out by its own direction, so right-to-left text cannot reorder what is around it.
    expect(await page.locator("#message-list .body[dir=auto]").count()).toBe(2);
    for (const c of [alice, bob]) expect(c.consoleErrors).toEqual([]);
  });

  it("adds each new message to the log once, and leaves the log alone while someone types", async () => {
    // The message list is a live region (role=log): a screen reader reads out what is added to it,
    // so redrawing it on every change (typing, presence, receipts) would read the log out again.
    const carol = await signIn(await newContext(), server.httpUrl, "carol");
    const dan = await signIn(await newContext(), server.httpUrl, "dan");
    await startChat(carol.page, "dan");
    await sendMessage(carol.page, "first");
    await startChat(dan.page, "carol");
    await expect.poll(() => shownMessages(dan.page)).toEqual(["first"]);
    await sendMessage(dan.page, "second");
    await expect.poll(() => shownMessages(carol.page)).toEqual(["first", "second"]);
    await expect.poll(() => deliveryOf(carol.page, "first")).toBe("Read");

    await carol.page.evaluate(() => {
      const list = document.getElementById("message-list")!;
      const seen = { added: [] as string[], removed: 0, inside: 0 };
      new MutationObserver((records) => {
        for (const r of records) {
          if (r.target !== list) seen.inside++;
          else {
            seen.added.push(...Array.from(r.addedNodes, (n) => n.textContent ?? ""));
            seen.removed += r.removedNodes.length;
          }
        }
      }).observe(list, { childList: true, subtree: true, characterData: true });
      (window as unknown as { logChanges: typeof seen }).logChanges = seen;
    });
    const logChanges = () =>
      carol.page.evaluate(
        () =>
          (window as unknown as { logChanges: { added: string[]; removed: number; inside: number } })
            .logChanges,
      );

    await dan.page.getByLabel("Message", { exact: true }).pressSequentially("thi");
    await expect.poll(() => carol.page.locator("#typing").textContent()).toContain("dan");
    expect(await logChanges()).toEqual({ added: [], removed: 0, inside: 0 });

    await sendMessage(dan.page, "third");
    await expect.poll(() => shownMessages(carol.page)).toEqual(["first", "second", "third"]);
    const changes = await logChanges();
    expect(changes.added).toEqual([expect.stringContaining("third")]);
    expect(changes.removed).toBe(0);
    for (const c of [carol, dan]) expect(c.consoleErrors).toEqual([]);
  });
});
