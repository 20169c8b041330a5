/**
 * Every process's HTTP server: /healthz (the process runs), /readyz (it can do its job: its
 * dependencies are reachable), /metrics (Prometheus). A gateway adds the WebSocket upgrade on /ws,
 * /v1/connect, the reference web client at / and, in dev mode on loopback, /v1/dev/token.
 *
 * With http.internalPort set, a second server on that port serves /healthz, /readyz and /metrics and
 * nothing else, and the client port no longer serves /metrics (it keeps /healthz and /readyz, which
 * load balancers' health checks use): the port behind a public load balancer shows no metrics.
 */
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { type AddressInfo, isIP } from "node:net";
import type { Duplex } from "node:stream";
import type { Gateway } from "../gateway/index.js";
import { isLoopbackHost, isValidUserId, signDevToken } from "../lib/auth.js";
import type { Config } from "../lib/config.js";
import type { Logger } from "../lib/log.js";
import type { Metrics } from "../lib/metrics.js";
import { loadWebClient, type WebAsset, webClientCsp } from "./web-client.js";

export interface HttpOptions {
  config: Config;
  log: Logger;
  metrics: Metrics;
  /** Readiness: why this process is not ready, or undefined when it is. */
  notReady: () => string | undefined;
  /** The gateway of this process, once it exists (gateway and all roles). */
  gateway: () => Gateway | undefined;
  /**
   * This process will have a gateway (roles gateway and all). The port listens before the gateway
   * exists (/readyz says "starting"): meanwhile a client is told to come back (503), not that there is
   * nothing here (404), which a client could take for a wrong URL.
   */
  servesClients: boolean;
}

export interface RunningHttp {
  port: number;
  /** The port of the internal server (http.internalPort), or undefined when it is off. */
  internalPort: number | undefined;
  /** Closes both servers (each within CLOSE_GRACE_MS); rejects when either failed to close. */
  close(): Promise<void>;
}

/** A request's headers in all, the upgrade's included (a JWT in Authorization is a few KB at most). */
const HEADERS_BYTES_MAX = 16 * 1024;
/**
 * How long a stopping server lets its connections finish before it cuts them: requests in flight, and
 * WebSockets answering the close frame the gateway sent. A silent or frozen client (which would hold
 * the stop for as long as it lives, or 30 s for ws's close handshake) is cut after it.
 */
export const CLOSE_GRACE_MS = 1_000;

const UPGRADE_NOT_FOUND = "HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
const UPGRADE_STARTING = "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

export async function serveHttp(o: HttpOptions): Promise<RunningHttp> {
  const webClient = loadWebClient(o.log);
  const { port, host, internalPort } = o.config.http;
  const metricsHere = internalPort === 0;
  const client = await openServer(
    o,
    port,
    host,
    (req, res) => handleHttp(req, res, o, webClient, metricsHere),
    (req, socket, head) => {
      const gateway = o.gateway();
      const path = (req.url ?? "").split("?")[0];
      if (path !== "/ws" || (!gateway && !o.servesClients)) {
        socket.end(UPGRADE_NOT_FOUND);
        return;
      }
      if (!gateway) {
        socket.end(UPGRADE_STARTING);
        return;
      }
      socket.on("error", () => socket.destroy());
      gateway.handleUpgrade(req, socket, head).catch((err: unknown) => {
        o.log.error("gateway: upgrade failed", { err });
        socket.destroy();
      });
    },
  );
  let internal: OpenServer | undefined;
  if (!metricsHere) {
    try {
      internal = await openServer(
        o,
        internalPort,
        host,
        (req, res) => handleInternal(req, res, o),
        (_req, socket) => socket.end(UPGRADE_NOT_FOUND),
      );
    } catch (err) {
      await client.close();
      throw new Error(
        `the internal HTTP server (http.internalPort, SWITCHBOARD_HTTP_INTERNAL_PORT) could not listen on ${host}:${internalPort}: ${(err as Error).message}`,
        { cause: err },
      );
    }
  }
  return {
    port: client.port,
    internalPort: internal?.port,
    close: async () => {
      const failed = (await Promise.allSettled([client.close(), internal?.close()])).flatMap((r) =>
        r.status === "rejected" ? [r.reason as unknown] : [],
      );
      if (failed.length === 1) throw failed[0];
      if (failed.length > 1) throw new AggregateError(failed, "the HTTP servers failed to close");
    },
  };
}

interface OpenServer {
  port: number;
  close(): Promise<void>;
}

/**
 * One listening HTTP server with the rules every one of them follows: the headers timeout (slowloris
 * bound), the header size limit, and a close that waits for its connections at most CLOSE_GRACE_MS.
 */
async function openServer(
  o: HttpOptions,
  port: number,
  host: string,
  onRequest: (req: IncomingMessage, res: ServerResponse) => void,
  onUpgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => void,
): Promise<OpenServer> {
  const { headersTimeoutMs } = o.config.http;
  const http = createServer(
    {
      headersTimeout: headersTimeoutMs,
      requestTimeout: headersTimeoutMs * 3,
      // Node enforces both timeouts only when it sweeps its connections, every 30 s by default: a
      // half-sent upgrade would live up to 30 s past the bound. Sweep often enough to keep it.
      connectionsCheckingInterval: connectionsCheckingIntervalMs(headersTimeoutMs),
      // Node's own default, stated because docs/protocol.md promises it: larger headers get 431.
      maxHeaderSize: HEADERS_BYTES_MAX,
    },
    onRequest,
  );
  // Upgraded sockets are the gateway's, but Node's server still counts them: a stop cuts them too.
  const upgraded = new Set<Duplex>();
  http.on("upgrade", (req, socket, head) => {
    upgraded.add(socket);
    socket.once("close", () => upgraded.delete(socket));
    onUpgrade(req, socket, head);
  });
  const listening = await listen(http, port, host);
  const cutAll = () => {
    http.closeAllConnections();
    for (const socket of upgraded) socket.destroy();
  };
  return {
    port: listening,
    close: async () => {
      // Node's close() stops the sweep that enforces headersTimeout, and waits for every connection:
      // a client that never sends a byte held it for good. Idle ones go now, the rest after the grace.
      const closed = new Promise<void>((resolve, reject) =>
        http.close((err) => (err ? reject(err) : resolve())),
      );
      http.closeIdleConnections();
      const cut = setTimeout(cutAll, CLOSE_GRACE_MS);
      try {
        await closed;
      } finally {
        clearTimeout(cut);
        cutAll();
      }
    },
  };
}

/** How often Node looks for connections past headersTimeout: at most a second late, or a tenth of it. */
export function connectionsCheckingIntervalMs(headersTimeoutMs: number): number {
  return Math.max(50, Math.min(1_000, Math.floor(headersTimeoutMs / 10)));
}

export function listen(server: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

/**
 * Why dev mode does not apply, or undefined when it does: only when asked for (auth.devTokens,
 * `start --dev`), only with the dev secret (no JWKS URL, no auth.secretFile) and only on a loopback
 * address. It decides both GET /v1/dev/token and whether a gRPC port may open without
 * authentication (runtime.ts): `--dev` on a public address or with production keys is no dev mode.
 */
export function devTokensRefusal(config: Config): string | undefined {
  if (!config.auth.devTokens) return "dev mode is off (switchboard start --dev turns it on)";
  if (config.auth.jwksUrl !== "") return "auth.jwksUrl is set";
  if (config.auth.issuers.length > 0) return "auth.issuers is set";
  if (config.auth.secretFile !== "") return "auth.secretFile is set";
  const host = config.http.host;
  if (!isLoopbackHost(host)) return `http.host ${host} is not a loopback address`;
  return undefined;
}

/** What GET /v1/connect answers (docs/protocol.md §1.1). */
export interface ConnectAnswer {
  url: string;
  gateway_id: string;
  connections: number;
  /**
   * The VAPID public key browsers subscribe to Web Push with (`applicationServerKey`), only when
   * Web Push is configured: a page offers notifications only then. It is no secret (push services
   * see it with every subscription and request), so handing it to anyone costs nothing.
   */
  web_push_public_key?: string;
}

export function connectAnswer(
  config: Config,
  host: string | undefined,
  gateway: Pick<Gateway, "id" | "connections">,
  forwardedProto?: string,
): ConnectAnswer {
  // Behind a proxy that ended TLS (it says so in X-Forwarded-Proto or Forwarded), the page that asks
  // is https, and a browser refuses a ws:// socket from it: the client connects back through the same
  // proxy, so over wss. What a client claims here decides only the URL it is given itself.
  const scheme = forwardedProto === "https" ? "wss" : "ws";
  const url = config.http.publicUrl || `${scheme}://${host ?? `${config.http.host}:${config.http.port}`}/ws`;
  const answer: ConnectAnswer = { url, gateway_id: gateway.id, connections: gateway.connections };
  // The split roles share one configuration (the operator's ConfigMap), so a gateway knows the key
  // the push processes sign with even though only they hold its private half.
  const key = config.push.webpush.vapidPublicKey;
  if (key !== "") answer.web_push_public_key = key;
  return answer;
}

/** `host[:port]` of a Host header: a DNS name, an IPv4 address or a bracketed IPv6 one (RFC 9110 7.2). */
export function isHostHeader(value: string): boolean {
  const m =
    /^(?:([A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*\.?)|\[([0-9A-Fa-f:.]+)\])(?::([0-9]{1,5}))?$/.exec(
      value,
    );
  if (!m) return false;
  if (m[2] !== undefined && isIP(m[2]) !== 6) return false;
  return m[3] === undefined || Number(m[3]) <= 65_535;
}

/**
 * The scheme the client used to reach the first proxy in front of this server, lowercased: the first
 * value of X-Forwarded-Proto, else the `proto=` of Forwarded's first element (RFC 7239: the first
 * proxy's); undefined if neither.
 */
export function forwardedProto(headers: IncomingHttpHeaders): string | undefined {
  const xfp = headers["x-forwarded-proto"];
  const first = (Array.isArray(xfp) ? xfp[0] : xfp)?.split(",")[0]?.trim();
  if (first) return first.toLowerCase();
  const forwarded = headers.forwarded?.split(",")[0];
  const proto = forwarded && /(?:^|;)\s*proto=(?:"([^"]*)"|([^;,\s]*))/i.exec(forwarded);
  const value = proto ? (proto[1] ?? proto[2]) : undefined;
  return value ? value.toLowerCase() : undefined;
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
}

/**
 * The internal paths, which both servers serve: answers /healthz, /readyz, and /metrics where
 * `metrics` says (the internal port when there is one, else the client port). False for any other
 * path, which the caller answers.
 */
function serveInternal(path: string, res: ServerResponse, o: HttpOptions, metrics: boolean): boolean {
  const json = (status: number, body: unknown) => sendJson(res, status, body);
  switch (path) {
    case "/healthz":
      json(200, { status: "ok" });
      return true;
    case "/readyz": {
      const why = o.notReady();
      if (why === undefined) json(200, { status: "ready" });
      else json(503, { status: "not ready", reason: why });
      return true;
    }
    case "/metrics":
      if (!metrics) return false;
      if (!o.config.metrics.enabled) {
        json(404, { error: "metrics disabled" });
        return true;
      }
      o.metrics.registry.metrics().then(
        (text) => res.writeHead(200, { "content-type": o.metrics.registry.contentType }).end(text),
        () => json(500, { error: "metrics failed" }),
      );
      return true;
  }
  return false;
}

/** The internal server (http.internalPort): the internal paths, and 404 for everything else. */
function handleInternal(req: IncomingMessage, res: ServerResponse, o: HttpOptions): void {
  const path = (req.url ?? "/").split("?")[0] ?? "/";
  if (req.method !== "GET") return sendJson(res, 405, { error: "method not allowed" });
  if (!serveInternal(path, res, o, true)) sendJson(res, 404, { error: "not found" });
}

function handleHttp(
  req: IncomingMessage,
  res: ServerResponse,
  o: HttpOptions,
  webClient: Map<string, WebAsset>,
  metricsHere: boolean,
): void {
  const path = (req.url ?? "/").split("?")[0] ?? "/";
  const json = (status: number, body: unknown) => sendJson(res, status, body);
  if (req.method !== "GET") return json(405, { error: "method not allowed" });
  if (serveInternal(path, res, o, metricsHere)) return;
  const gateway = o.gateway();
  if (!gateway) {
    if (!o.servesClients) return json(404, { error: "not found" });
    // Readable from any origin, as /v1/connect's other answers are (its draining 503 too).
    if (path === "/v1/connect") res.setHeader("access-control-allow-origin", "*");
    res.setHeader("retry-after", "1");
    return json(503, { error: "starting: this gateway takes no connections yet; ask again" });
  }
  switch (path) {
    case "/v1/dev/token": {
      const refusal = devTokensRefusal(o.config);
      if (refusal !== undefined) return json(404, { error: `dev tokens are off: ${refusal}` });
      const user = new URL(req.url ?? "/", "http://x").searchParams.get("user") ?? "";
      if (!isValidUserId(user)) return json(400, { error: "user must be 1-128 of A-Z a-z 0-9 . _ @ : + -" });
      signDevToken(o.config.dataDir, user, 3600).then(
        (token) => json(200, { token, user }),
        () => json(500, { error: "could not sign" }),
      );
      return;
    }
    case "/v1/connect": {
      // Public discovery, no credentials: readable from any origin, so a web client hosted
      // elsewhere (web/dist on a static host) can ask it too.
      res.setHeader("access-control-allow-origin", "*");
      // A gateway that is not ready (draining, stopping, its storage unreachable) sends no one here:
      // a client would only be refused at its auth. Ask again: the load balancer, which /readyz took
      // this gateway out of, answers with another. Why it is not ready (a storage address) is for
      // /readyz, not for the public answer.
      const why = o.notReady();
      if (why !== undefined) {
        res.setHeader("retry-after", "1");
        const what = why === "draining" || why === "stopping" ? why : "not ready";
        return json(503, { error: `${what}: this gateway takes no new connections; ask again` });
      }
      // The answer's URL is built from the Host header, so only a host and port go into it.
      const host = req.headers.host || undefined;
      if (host !== undefined && o.config.http.publicUrl === "" && !isHostHeader(host))
        return json(400, { error: "bad Host header: a host name or IP address, and an optional port" });
      return json(200, connectAnswer(o.config, host, gateway, forwardedProto(req.headers)));
    }
    case "/ws":
      // A WebSocket upgrade never gets here (Node hands it to the gateway): this is a plain GET.
      res.setHeader("upgrade", "websocket");
      return json(426, {
        error: "upgrade required: open a WebSocket here (Connection: Upgrade, Upgrade: websocket)",
      });
    case "/": {
      const index = webClient.get("/");
      if (!index) return json(404, { error: "the web client is not built (npm run build)" });
      return serveWebAsset(res, index, o.config);
    }
    default: {
      const asset = webClient.get(path);
      return asset ? serveWebAsset(res, asset, o.config) : json(404, { error: "not found" });
    }
  }
}

function serveWebAsset(res: ServerResponse, asset: WebAsset, config: Config): void {
  res
    .writeHead(200, {
      "content-type": asset.contentType,
      "content-security-policy": webClientCsp(config.http.publicUrl),
      "x-content-type-options": "nosniff",
      // The file names do not change with their content: revalidate rather than cache blindly.
      "cache-control": "no-cache",
    })
    .end(asset.body);
}
