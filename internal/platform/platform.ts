/**
 * The all-in-one platform: the five services in one process, wired through the same service
 * clients they use across processes (in-process transport), over one backend, behind one HTTP
 * server (/ws, /healthz, /readyz, /metrics, /v1/connect) and optionally one gRPC server.
 */

import { readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { hostname } from "node:os";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import { PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { type DistributedOptions, openDistributedBackends } from "../backends/distributed/index.js";
import { EmbeddedBackends } from "../backends/embedded/index.js";
import type { Backends } from "../backends/types.js";
import { Gateway } from "../gateway/index.js";
import { createIdService } from "../id/index.js";
import { createVerifier, isValidUserId, signDevToken } from "../lib/auth.js";
import type { Config } from "../lib/config.js";
import { createLogger, type Logger } from "../lib/log.js";
import { createMetrics, type Metrics } from "../lib/metrics.js";
import { addService, inProcessClient, type ServiceClient } from "../lib/rpc.js";
import { Presence, presenceServiceImpl } from "../presence/index.js";
import { Push, pushServiceImpl } from "../push/index.js";
import { Conversations, IdPool, Router, routerServiceImpl } from "../router/index.js";

export interface RunningPlatform {
  /** Actual HTTP port (useful with port 0). */
  port: number;
  grpcPort: number;
  gateway: Gateway;
  metrics: Metrics;
  close(): Promise<void>;
}

export async function startPlatform(config: Config, log: Logger = createLogger()): Promise<RunningPlatform> {
  const metrics = createMetrics();
  let fatal: ((err: unknown) => void) | undefined;
  const backends: Backends = await openBackends(config, log, (err) => fatal?.(err));

  // Services, each reached only through its client interface.
  let routerClient: ServiceClient<typeof RouterService> | undefined;
  const idClient = inProcessClient(IdService, createIdService(config.id.workerId));
  const push = new Push({ devices: backends.devices, webhookUrl: config.push.webhookUrl, log, metrics });
  const pushImpl = pushServiceImpl(push, backends.devices);
  const presence = new Presence({
    offlineAfterMs: config.presence.offlineAfterMs,
    store: backends.presence,
    router: () => routerClient!,
    log,
  });
  const presenceImpl = presenceServiceImpl(presence, backends.presence);
  const presenceClient = inProcessClient(PresenceService, presenceImpl);
  const conversations = new Conversations(
    backends.membership,
    backends.log,
    new IdPool(idClient, config.id.batchSize),
    {
      bodyCharsMax: config.gateway.bodyCharsMax,
      membersMax: config.groups.membersMax,
      nameCharsMax: config.groups.nameCharsMax,
    },
  );
  const router = new Router({ backends, push, log, metrics });
  const routerImpl = routerServiceImpl(router, conversations, backends.messages, config.sync.pageSizeMax);
  routerClient = inProcessClient(RouterService, routerImpl);

  const gateway = new Gateway({
    config,
    log,
    metrics,
    backends,
    conversations,
    router: routerClient,
    presence: presenceClient,
    verify: createVerifier({ dataDir: config.dataDir, ...config.auth }),
    gatewayId: config.gateway.id || `${hostname()}-${process.pid}`,
    gatewayEpoch: Date.now(),
  });
  const gatewayImpl = gateway.service();
  router.attachGateway(gateway.id, inProcessClient(GatewayService, gatewayImpl));
  await router.start();

  let grpcServer: grpc.Server | undefined;
  let grpcPort = 0;
  if (config.grpc.port >= 0) {
    grpcServer = new grpc.Server({ "grpc.max_receive_message_length": 4 * 1024 * 1024 });
    addService(
      grpcServer,
      IdService,
      createIdService(config.id.workerId + 1 > 1023 ? 0 : config.id.workerId + 1),
    );
    addService(grpcServer, RouterService, routerImpl);
    addService(grpcServer, PresenceService, presenceImpl);
    addService(grpcServer, PushService, pushImpl);
    addService(grpcServer, GatewayService, gatewayImpl);
    grpcPort = await new Promise<number>((resolve, reject) =>
      grpcServer!.bindAsync(
        `${config.http.host}:${config.grpc.port}`,
        grpc.ServerCredentials.createInsecure(),
        (err, port) => (err ? reject(err) : resolve(port)),
      ),
    );
  }

  let ready = true;
  const demoPage = readDemoPage(log);
  const http = createServer((req, res) =>
    handleHttp(req, res, { config, metrics, gateway, demoPage, isReady: () => ready }),
  );
  http.headersTimeout = config.http.headersTimeoutMs;
  http.requestTimeout = config.http.headersTimeoutMs * 3;
  http.on("upgrade", (req, socket, head) => {
    const path = (req.url ?? "").split("?")[0];
    if (path !== "/ws") {
      socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
      return;
    }
    socket.on("error", () => socket.destroy());
    gateway.handleUpgrade(req, socket, head).catch((err: unknown) => {
      log.error("gateway: upgrade failed", { err });
      socket.destroy();
    });
  });
  const port = await listen(http, config.http.port, config.http.host);
  log.info("switchboard started", {
    url: `ws://${config.http.host}:${port}/ws`,
    dataDir: config.dataDir,
    backend: backends.name,
    grpcPort,
  });

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      ready = false;
      await gateway.close();
      await new Promise<void>((r) => http.close(() => r()));
      http.closeAllConnections();
      if (grpcServer) await new Promise<void>((r) => grpcServer!.tryShutdown(() => r()));
      await router.close();
      presence.close();
      await push.close();
      await backends.close();
    })());
  fatal = (err) => {
    log.error("storage failed; shutting down so that nothing is acknowledged that is not durable", { err });
    ready = false;
    process.exitCode = 70;
    void close();
  };
  return { port, grpcPort, gateway, metrics, close };
}

async function openBackends(config: Config, log: Logger, onFatal: (err: unknown) => void): Promise<Backends> {
  if (config.backend === "distributed") return openDistributedBackends(distributedOptions(config, log));
  return new EmbeddedBackends({
    dataDir: config.dataDir,
    onFatal,
    onConsumerError: (group, err) => log.error("consumer failed; retrying the batch", { group, err }),
  });
}

/** The distributed backend's options from the configuration tree. */
export function distributedOptions(
  config: Config,
  log: Logger,
  sequencer = config.kafka.sequencer,
): DistributedOptions {
  return {
    brokers: config.kafka.brokers,
    clientId: `switchboard-${hostname()}-${process.pid}`,
    topicPrefix: config.kafka.topicPrefix,
    partitions: config.kafka.partitions,
    replicationFactor: config.kafka.replicationFactor,
    retentionHours: config.kafka.retentionHours,
    appendTimeoutMs: config.kafka.appendTimeoutMs,
    cassandra: {
      contactPoints: config.cassandra.contactPoints,
      localDataCenter: config.cassandra.datacenter,
      keyspace: config.cassandra.keyspace,
      replication: { class: "SimpleStrategy", replication_factor: config.cassandra.replicationFactor },
      consistency: { level: config.cassandra.consistency, serial: config.cassandra.serialConsistency },
    },
    log,
    sequencer,
  };
}

/** The demo chat page (web/index.html), served at / so `npm start` gives a working chat at once. */
function readDemoPage(log: Logger): string | undefined {
  const path = fileURLToPath(new URL("../../../web/index.html", import.meta.url));
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    log.debug("no demo page", { path, err });
    return undefined;
  }
}

function devTokensAllowed(config: Config): boolean {
  const loopback =
    config.http.host === "localhost" || config.http.host === "::1" || config.http.host.startsWith("127.");
  return config.auth.devTokens && config.auth.jwksUrl === "" && loopback;
}

function listen(server: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

interface HttpDeps {
  config: Config;
  demoPage: string | undefined;
  metrics: Metrics;
  gateway: Gateway;
  isReady: () => boolean;
}

function handleHttp(req: IncomingMessage, res: ServerResponse, deps: HttpDeps): void {
  const path = (req.url ?? "/").split("?")[0];
  const json = (status: number, body: unknown) => {
    res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
  };
  if (req.method !== "GET") return json(405, { error: "method not allowed" });
  switch (path) {
    case "/healthz":
      return json(200, { status: "ok" });
    case "/readyz":
      return deps.isReady() ? json(200, { status: "ready" }) : json(503, { status: "not ready" });
    case "/metrics":
      if (!deps.config.metrics.enabled) return json(404, { error: "metrics disabled" });
      deps.metrics.registry.metrics().then(
        (text) => res.writeHead(200, { "content-type": deps.metrics.registry.contentType }).end(text),
        () => json(500, { error: "metrics failed" }),
      );
      return;
    case "/":
      if (!deps.demoPage) return json(404, { error: "no demo page in this build" });
      res
        .writeHead(200, {
          "content-type": "text/html; charset=utf-8",
          "content-security-policy":
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:",
        })
        .end(deps.demoPage);
      return;
    case "/v1/dev/token": {
      if (!devTokensAllowed(deps.config))
        return json(404, {
          error: "dev tokens are off (JWKS configured, non-loopback address, or auth.devTokens=false)",
        });
      const user = new URL(req.url ?? "/", "http://x").searchParams.get("user") ?? "";
      if (!isValidUserId(user)) return json(400, { error: "user must be 1-128 of A-Z a-z 0-9 . _ @ : + -" });
      signDevToken(deps.config.dataDir, user, 3600).then(
        (token) => json(200, { token, user }),
        () => json(500, { error: "could not sign" }),
      );
      return;
    }
    case "/v1/connect": {
      const url =
        deps.config.http.publicUrl ||
        `ws://${req.headers.host ?? `${deps.config.http.host}:${deps.config.http.port}`}/ws`;
      return json(200, { url, gateway_id: deps.gateway.id, connections: deps.gateway.connections });
    }
    default:
      return json(404, { error: "not found" });
  }
}
