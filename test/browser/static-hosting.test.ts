/**
 * web/dist is static files for any host: served here by a plain file server on another origin than
 * the gateway, the page signs in with a pasted token (no dev tokens involved) and chats with a
 * user of the SDK in Node. And a link cannot take the user's token elsewhere: ?server= naming
 * another server gets nothing from it unless the user confirms, and never the app's backend token.
 */
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocketServer } from "ws";
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
        `<head>\n<base href="/">\n<meta name="switchboard-token-url" content="/api/chat-token">\n<meta name="switchboard-server" content="${gateway.httpUrl}">`,
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

/**
 * Someone else's server, which a link names with ?server=: its /v1/connect names its own WebSocket
 * endpoint, and it records whatever reaches it (a request, a connection, a frame: an auth frame
 * carries a token).
 */
interface StrangeServer {
  httpUrl: string;
  requests: string[];
  connections: number;
  frames: string[];
  close(): Promise<void>;
}

function strangeServer(): Promise<StrangeServer> {
  const requests: string[] = [];
  const frames: string[] = [];
  let port = 0;
  const server = createServer((req, res) => {
    requests.push(req.url ?? "");
    if (req.url === "/v1/connect")
      return void res
        .writeHead(200, { "content-type": "application/json", "access-control-allow-origin": "*" })
        .end(JSON.stringify({ url: `ws://127.0.0.1:${port}/ws` }));
    res.writeHead(404).end();
  });
  const wss = new WebSocketServer({ server, path: "/ws" });
  const strange: StrangeServer = {
    httpUrl: "",
    requests,
    connections: 0,
    frames,
    close: () =>
      new Promise((resolve) => {
        for (const ws of wss.clients) ws.terminate();
        wss.close(() => server.close(() => resolve()));
      }),
  };
  wss.on("connection", (ws) => {
    strange.connections++;
    ws.on("message", (data) => frames.push(String(data)));
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => {
      port = (server.address() as AddressInfo).port;
      strange.httpUrl = `http://127.0.0.1:${port}`;
      resolve(strange);
    }),
  );
}

/** What the page remembers of its session (localStorage), undefined when nothing. */
function storedSession(page: Page): Promise<{ server: string; gatewayUrl: string } | undefined> {
  return page.evaluate(() => {
    const text = localStorage.getItem("switchboard:session");
    return text === null ? undefined : JSON.parse(text);
  });
}

let gateway: ServerProcess;
let host: { server: Server; url: string };
let strange: StrangeServer;
let browser: Browser;

beforeAll(async () => {
  // Not in dev mode: the page must do without /v1/dev/token.
  gateway = await startServer();
  mintToken = (user) => devToken(gateway.dataDir, user);
  host = await staticHost();
  strange = await strangeServer();
  browser = await launchBrowser();
});
afterAll(async () => {
  await browser?.close();
  await new Promise((r) => host?.server.close(r));
  await strange?.close();
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
    // The gateway is not the page's origin: the user says the token may go there.
    const confirm = alice.page.getByRole("alertdialog");
    await expect.poll(() => confirm.textContent()).toContain(gateway.httpUrl);
    await alice.page.getByRole("button", { name: `Sign in to ${gateway.httpUrl}` }).click();
    await waitForStatus(alice.page, "Online");
    expect(await alice.page.locator("#me").textContent()).toBe("alice");
    // Confirmed, so the page opens it again without asking (without ?server=, which shows the form).
    await alice.page.goto(`${host.url}/`);
    await waitForStatus(alice.page, "Online");

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
    // The page names its chat server (<meta name="switchboard-server">).
    const carol = await openClient(context, host.url, "/app/");
    await carol.page.getByRole("button", { name: "Sign in with your account" }).click();
    await waitForStatus(carol.page, "Online");
    expect(await carol.page.locator("#me").textContent()).toBe("carol");
    expect(carol.consoleErrors).toEqual([]);
    await context.close();
  });
});

describe("a link naming another server (?server=)", () => {
  it("never gets the token of the app's backend: that goes to the server the page names", async () => {
    const context = await browser.newContext();
    await context.addCookies([{ name: "user", value: "dave", url: host.url }]);
    const dave = await openClient(context, host.url, `/app/?server=${encodeURIComponent(strange.httpUrl)}`);
    expect(await dave.page.getByLabel("Server").inputValue()).toBe(strange.httpUrl);
    await dave.page.getByRole("button", { name: "Sign in with your account" }).click();
    const outcome = async () =>
      strange.frames.length > 0
        ? `frames to ${strange.httpUrl}: ${strange.frames.join(" ")}`
        : await dave.page.locator("#connection").textContent();
    await expect.poll(outcome, { timeout: 20_000 }).toBe("Online");
    expect(await dave.page.locator("#me").textContent()).toBe("dave");
    expect(strange.frames).toEqual([]);
    expect(strange.connections).toBe(0);
    expect(strange.requests).toEqual([]);
    // What a reload opens again is the page's server.
    expect((await storedSession(dave.page))?.server).toBe(gateway.httpUrl);
    expect(dave.consoleErrors).toEqual([]);
    await context.close();
  });

  it("gets a pasted token only once the user confirms, and a session there unconfirmed is not opened", async () => {
    const context = await browser.newContext();
    const erin = await openClient(context, host.url, `/?server=${encodeURIComponent(strange.httpUrl)}`);
    const token = await devToken(gateway.dataDir, "erin");
    await erin.page.getByLabel("Or paste a token (JWT)").fill(token);
    await erin.page.getByRole("button", { name: "Sign in with this token" }).click();
    const confirm = erin.page.getByRole("alertdialog");
    await expect.poll(() => confirm.textContent()).toContain(strange.httpUrl);
    await erin.page.getByRole("button", { name: "Cancel" }).click();
    expect(await confirm.isHidden()).toBe(true);
    expect(await storedSession(erin.page)).toBeUndefined();

    // A session for that server that nobody confirmed (say, remembered by an earlier version of the
    // page) is not opened on the next load.
    await erin.page.evaluate(
      ([server, t]) =>
        localStorage.setItem(
          "switchboard:session",
          JSON.stringify({
            server,
            gatewayUrl: `${server.replace(/^http/, "ws")}/ws`,
            userId: "erin",
            token: t,
            source: "pasted",
          }),
        ),
      [strange.httpUrl, token] as const,
    );
    await erin.page.goto(host.url);
    await expect.poll(() => erin.page.locator("#sign-in").isVisible()).toBe(true);
    expect(await storedSession(erin.page)).toBeUndefined();
    expect(strange.connections).toBe(0);
    expect(strange.frames).toEqual([]);
    expect(strange.requests).toEqual([]);
    expect(erin.consoleErrors).toEqual([]);
    await context.close();
  });

  it("cannot take the gateway's own page elsewhere: its policy allows connections to its origin only", async () => {
    const policy = (await fetch(`${gateway.httpUrl}/`)).headers.get("content-security-policy") ?? "";
    expect(policy).toContain("connect-src 'self';");
    const context = await browser.newContext();
    const frank = await openClient(
      context,
      gateway.httpUrl,
      `/?server=${encodeURIComponent(strange.httpUrl)}`,
    );
    await frank.page.getByLabel("Or paste a token (JWT)").fill(await devToken(gateway.dataDir, "frank"));
    await frank.page.getByRole("button", { name: "Sign in with this token" }).click();
    // Even confirmed, the browser refuses to connect there.
    await frank.page.getByRole("button", { name: `Sign in to ${strange.httpUrl}` }).click();
    await expect
      .poll(() => frank.page.locator("#sign-in-error").textContent(), { timeout: 20_000 })
      .not.toBe("");
    expect(strange.connections).toBe(0);
    expect(strange.frames).toEqual([]);
    await context.close();
  });
});
