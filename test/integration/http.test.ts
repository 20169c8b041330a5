/**
 * The HTTP server in front of the gateway: a client that never finishes its request headers
 * (slowloris; here a half-sent WebSocket upgrade) is cut at http.headersTimeoutMs, and
 * /v1/dev/token exists only in dev mode (`start --dev`), which the start-up line shouts about.
 */
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RawClient } from "../helpers/raw-client.js";
import { type ServerProcess, startServer } from "../helpers/server.js";

const HEADERS_TIMEOUT_MS = 2_000;
let server: ServerProcess;

beforeAll(async () => {
  server = await startServer({ env: { SWITCHBOARD_HTTP_HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS) } });
});
afterAll(async () => {
  await server.dispose();
});

/** A raw HTTP/1.1 request of `head` (its request line and header lines) and the whole answer. */
async function rawRequest(port: number, head: string): Promise<string> {
  const socket = connect(port, "127.0.0.1");
  let answer = "";
  socket.on("data", (d: Buffer) => {
    answer += d.toString();
  });
  const closed = new Promise<void>((resolve, reject) => {
    socket.once("close", () => resolve());
    socket.once("error", reject);
  });
  socket.write(`${head}\r\nConnection: close\r\n\r\n`);
  await closed;
  return answer;
}

/**
 * Opens a raw TCP connection, drips an upgrade request's header lines without ever ending them, and
 * resolves with how long the server let it live and what it answered.
 */
async function halfSentUpgrade(port: number): Promise<{ ms: number; answer: string }> {
  const socket = connect(port, "127.0.0.1");
  await new Promise<void>((r) => socket.once("connect", () => r()));
  const started = Date.now();
  socket.write(
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
  );
  // One more header line every 250 ms, never the blank line that ends them.
  let n = 0;
  const drip = setInterval(() => socket.write(`X-Slow-${++n}: ${n}\r\n`), 250);
  let answer = "";
  socket.on("data", (d: Buffer) => {
    answer += d.toString();
  });
  socket.on("error", () => {});
  // Far past the bound: without the fix Node's 30 s sweep cuts it only here.
  const gaveUp = setTimeout(() => socket.destroy(), 10_000);
  await new Promise<void>((r) => socket.once("close", () => r()));
  clearInterval(drip);
  clearTimeout(gaveUp);
  return { ms: Date.now() - started, answer };
}

describe("unfinished requests", () => {
  it("cuts a half-sent upgrade at http.headersTimeoutMs, within a second after it", async () => {
    const cuts = await Promise.all([0, 1, 2].map(() => halfSentUpgrade(server.port)));
    for (const { ms, answer } of cuts) {
      expect(answer).toMatch(/^HTTP\/1\.1 408 /);
      expect(ms).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 100);
      expect(ms).toBeLessThanOrEqual(HEADERS_TIMEOUT_MS + 1_000);
    }
    // The server took no harm: a WebSocket still connects.
    const c = await RawClient.connect(server.url);
    c.close();
  });
});

describe("plain requests to the WebSocket path", () => {
  it("are told to upgrade (426, GET) or refused (405), not taken for a missing page", async () => {
    const get = await fetch(`${server.httpUrl}/ws`);
    expect(get.status).toBe(426);
    expect(get.headers.get("upgrade")).toBe("websocket");
    expect(((await get.json()) as { error: string }).error).toMatch(/^upgrade required/);
    const post = await fetch(`${server.httpUrl}/ws`, { method: "POST" });
    expect(post.status).toBe(405);
    expect(post.headers.get("content-type")).toMatch(/^application\/json/);
  });
});

describe("dev tokens", () => {
  it("are off unless dev mode is asked for", async () => {
    const res = await fetch(`${server.httpUrl}/v1/dev/token?user=alice`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: string }).error).toContain("dev mode is off");
    expect(server.startLine.warning).toBeUndefined();
  });

  it("are served in dev mode (start --dev), with a warning in the start-up line", async () => {
    const dev = await startServer({ args: ["--dev"] });
    try {
      expect(String(dev.startLine.warning)).toMatch(/^DEV MODE: .*\/v1\/dev\/token .*ANY user/);
      expect(dev.stderr()).toContain("DEV MODE");
      const res = await fetch(`${dev.httpUrl}/v1/dev/token?user=alice`);
      expect(res.status).toBe(200);
      const { token } = (await res.json()) as { token: string };
      const c = await RawClient.connect(dev.url, { token });
      c.close();
    } finally {
      await dev.dispose();
    }
  });
});

describe("the web client", () => {
  it("is served at / with its script, the SDK bundle, styles and icon, all from this origin only", async () => {
    const page = await fetch(`${server.httpUrl}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toBe("text/html; charset=utf-8");
    // No inline code: the policy allows scripts from the origin only.
    expect(page.headers.get("content-security-policy")).toContain("default-src 'self'");
    expect(page.headers.get("content-security-policy")).not.toContain("unsafe-inline");
    const html = await page.text();
    expect(html).toContain('<script type="module" src="app.js"></script>');
    expect(html).toContain('<link rel="icon" href="favicon.svg"');
    const types: Record<string, string> = {
      "/app.js": "text/javascript; charset=utf-8",
      "/switchboard-sdk.js": "text/javascript; charset=utf-8",
      "/styles.css": "text/css; charset=utf-8",
      "/favicon.svg": "image/svg+xml",
      "/sw.js": "text/javascript; charset=utf-8",
    };
    for (const [path, type] of Object.entries(types)) {
      const res = await fetch(`${server.httpUrl}${path}`);
      expect(res.status, path).toBe(200);
      expect(res.headers.get("content-type"), path).toBe(type);
    }
    // The page loads the SDK the SDK ships rather than a copy of its own.
    expect(await (await fetch(`${server.httpUrl}/app.js`)).text()).toContain('from"./switchboard-sdk.js"');
    // A copy of web/dist on another host may ask for the gateway's WebSocket URL.
    const connect = await fetch(`${server.httpUrl}/v1/connect`, {
      headers: { origin: "https://chat.example" },
    });
    expect(connect.headers.get("access-control-allow-origin")).toBe("*");
    expect(((await connect.json()) as { url: string }).url).toMatch(/^ws:\/\/127\.0\.0\.1:\d+\/ws$/);
    // Behind a proxy that ended TLS, the page is https: the socket it is given is wss, through the proxy.
    const proxied = await fetch(`${server.httpUrl}/v1/connect`, {
      headers: { "x-forwarded-proto": "https" },
    });
    expect(((await proxied.json()) as { url: string }).url).toMatch(/^wss:\/\/127\.0\.0\.1:\d+\/ws$/);
    // The URL is built from the Host header only when it is a host and a port.
    const port = Number(new URL(server.httpUrl).port);
    const spoofed = await rawRequest(port, "GET /v1/connect HTTP/1.1\r\nHost: evil.com/path?x=");
    expect(spoofed).toMatch(/^HTTP\/1\.1 400 /);
    expect(spoofed).toContain('{"error":"bad Host header: ');
    expect(spoofed).not.toContain("evil.com");
    const named = await rawRequest(port, "GET /v1/connect HTTP/1.1\r\nHost: chat.example:443");
    expect(named).toContain('"url":"ws://chat.example:443/ws"');
    // Without a host, the gateway names its own listen address.
    const hostless = await rawRequest(port, "GET /v1/connect HTTP/1.1\r\nHost:");
    expect(hostless).toMatch(/"url":"ws:\/\/[^/"]+:\d+\/ws"/);
    // Only the files of the build are served: nothing else of the file system.
    for (const path of ["/index.ts", "/../package.json", "/web/index.html", "/src/main.ts"]) {
      expect((await fetch(`${server.httpUrl}${path}`)).status, path).toBe(404);
    }
  });
});
