/**
 * web/dist is static files for any host: served here by a plain file server on another origin than
 * the gateway, the page signs in with a pasted token (no dev tokens involved) and chats with a
 * user of the SDK in Node.
 */
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type IncomingMessage as SdkMessage, SwitchboardClient } from "../../sdk/src/index.js";
import { devToken, repoRoot, type ServerProcess, startServer } from "../helpers/server.js";
import {
  launchBrowser,
  openClient,
  sendMessage,
  shownMessages,
  startChat,
  waitForStatus,
} from "./harness.js";

const TYPES: Record<string, string> = {
  ".html": "text/html",
  ".js": "text/javascript",
  ".css": "text/css",
  ".svg": "image/svg+xml",
};

/** An app's backend minting chat tokens for its signed-in user (here: whoever the cookie names). */
let mintToken: (user: string) => Promise<string>;

/**
 * The simplest static host: the files of web/dist, nothing else; plus, under /app/, the same page
 * configured with the token URL of an app's backend, and that backend's /api/chat-token.
 */
function staticHost(): Promise<{ server: Server; url: string }> {
  const dist = join(repoRoot, "web/dist");
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    if (path === "/api/chat-token") {
      const user = /user=([\w-]+)/.exec(req.headers.cookie ?? "")?.[1];
      if (!user)
        return void res
          .writeHead(401, { "content-type": "application/json" })
          .end('{"error":"sign in to the app first"}');
      void mintToken(user).then((token) =>
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ token })),
      );
      return;
    }
    if (path === "/app/") {
      const html = readFileSync(join(dist, "index.html"), "utf8").replace(
        "<head>",
        '<head>\n<base href="/">\n<meta name="switchboard-token-url" content="/api/chat-token">',
      );
      return void res.writeHead(200, { "content-type": "text/html" }).end(html);
    }
    const file = path === "/" ? "index.html" : path.slice(1);
    if (file.includes("/") || file.startsWith(".")) return void res.writeHead(404).end();
    try {
      const body = readFileSync(join(dist, file));
      res.writeHead(200, {
        "content-type": TYPES[file.slice(file.lastIndexOf("."))] ?? "application/octet-stream",
      });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({ server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }),
    ),
  );
}

let gateway: ServerProcess;
let host: { server: Server; url: string };
let browser: Browser;

beforeAll(async () => {
  // Not in dev mode: the page must do without /v1/dev/token.
  gateway = await startServer();
  mintToken = (user) => devToken(gateway.dataDir, user);
  host = await staticHost();
  browser = await launchBrowser();
});
afterAll(async () => {
  await browser?.close();
  await new Promise((r) => host?.server.close(r));
  await gateway?.dispose();
});

describe("the static build on another host", () => {
  it("signs in with a pasted token and chats through the gateway on another origin", async () => {
    const bob = new SwitchboardClient({ url: gateway.url, token: await devToken(gateway.dataDir, "bob") });
    const bobReceived: string[] = [];
    bob.on("message", ({ message }: SdkMessage) => {
      bobReceived.push(`${message.sender}: ${message.body}`);
    });
    await bob.connect();

    const context = await browser.newContext();
    const alice = await openClient(context, `${host.url}/?server=${encodeURIComponent(gateway.httpUrl)}`);
    await alice.page.getByLabel("Or paste a token (JWT)").fill(await devToken(gateway.dataDir, "alice"));
    await alice.page.getByRole("button", { name: "Sign in with this token" }).click();
    await waitForStatus(alice.page, "Online");
    expect(await alice.page.locator("#me").textContent()).toBe("alice");

    await startChat(alice.page, "bob");
    await sendMessage(alice.page, "from a static host");
    await expect.poll(() => bobReceived).toEqual(["alice: from a static host"]);
    await bob.send({ toUser: "alice" }, "received");
    await expect.poll(() => shownMessages(alice.page)).toEqual(["from a static host", "received"]);

    expect(alice.consoleErrors).toEqual([]);
    await bob.close();
    await context.close();
  });

  it("signs in with a token from the app's backend when the page names its token URL", async () => {
    const context = await browser.newContext();
    // The app's own sign-in set a cookie; the page's token request carries it.
    await context.addCookies([{ name: "user", value: "carol", url: host.url }]);
    const carol = await openClient(context, `${host.url}/app/?server=${encodeURIComponent(gateway.httpUrl)}`);
    await carol.page.getByRole("button", { name: "Sign in with your account" }).click();
    await waitForStatus(carol.page, "Online");
    expect(await carol.page.locator("#me").textContent()).toBe("carol");
    expect(carol.consoleErrors).toEqual([]);
    await context.close();
  });
});
