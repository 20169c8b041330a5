/**
 * mTLS on a real grpc-js server (ADR 0007), with certificates `openssl` makes here: the port serves
 * only TLS and requires a client certificate of a CA in the mounted ca.crt; the certificate's
 * `switchboard://` URI SAN (else its CN) is the caller's principal, authorized like a bearer
 * credential. Rotating the mounted files (the kubelet's way) takes effect without a restart: a client
 * of the revoked CA is refused, on a connection it opened before as well as on a new one.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { newKey } from "../../internal/grpc-auth/key-file.js";
import { grpcGuard } from "../../internal/grpc-auth/setup.js";
import { grpcTls } from "../../internal/grpc-auth/tls.js";
import { loadConfig } from "../../internal/lib/config.js";
import { Code, SwitchboardError } from "../../internal/lib/errors.js";
import { createLogger } from "../../internal/lib/log.js";
import { createMetrics } from "../../internal/lib/metrics.js";
import { addService, grpcClient, guardServer } from "../../internal/lib/rpc.js";
import { serveGrpc } from "../../internal/process/grpc.js";
import { type Issued, TestPki } from "../helpers/certificates.js";

const pki = new TestPki();
afterAll(() => pki.close());
const opened: Array<{ close(): unknown }> = [];
afterEach(async () => {
  for (const c of opened.splice(0).reverse()) await c.close();
});

const log = createLogger({ test: "grpc-tls" });
const caA = pki.ca("ca-a");
const caB = pki.ca("ca-b");
const routerKey = newKey("role:router");
const gatewayKey = newKey("role:gateway");
const keyFile = join(pki.dir, "grpc-keys");
writeFileSync(keyFile, `${routerKey.line}\n${gatewayKey.line}\n`);
const tlsConfig = (dir: string, clientCertificate: "require" | "optional" = "require") =>
  loadConfig(
    {},
    {
      "grpc.tls.dir": dir,
      "grpc.tls.refreshMs": "100",
      "grpc.tls.clientCertificate": clientCertificate,
      "grpc.clients": "billing=publish",
      "grpc.keyFile": keyFile,
    },
  );

/** A server of IdService and GatewayService with mTLS from `dir`; `seen` records who each handler ran for. */
async function tlsServer(dir: string, clientCertificate: "require" | "optional" = "require") {
  const config = tlsConfig(dir, clientCertificate);
  const tls = grpcTls(config, log)!;
  opened.push(tls);
  const running = await serveGrpc("127.0.0.1", 0, {
    metrics: createMetrics().grpc,
    reflection: false,
    serving: () => true,
    credentials: tls.serverCredentials,
  });
  opened.push(running);
  guardServer(running.server, (await grpcGuard(config, log, tls))!);
  const seen: string[] = [];
  addService(running.server, IdService, {
    allocateIds: async (_req, ctx) => {
      seen.push(`allocate by ${ctx.principal}`);
      return { ids: ["1"] };
    },
  });
  addService(running.server, GatewayService, {
    deliver: async function* (requests) {
      for await (const _ of requests) yield {};
    },
    drain: async (_req, ctx) => {
      seen.push(`drain by ${ctx.principal}`);
      return {};
    },
    stats: async () => ({}),
  });
  return { address: `127.0.0.1:${running.port}`, seen, tls };
}

/** A backend caller with its own certificate (or none), verifying the server's name against `trusted`. */
function caller(address: string, trusted: Issued, identity?: Issued, bearer?: string) {
  const credentials = grpc.credentials.createSsl(
    Buffer.from(trusted.cert),
    identity ? Buffer.from(identity.key) : null,
    identity ? Buffer.from(identity.cert) : null,
  );
  const c = grpcClient(IdService, address, {
    credentials,
    serverName: "localhost",
    ...(bearer ? { bearer: () => bearer } : {}),
  });
  opened.push(c);
  return c;
}

async function outcome(call: Promise<unknown>): Promise<string> {
  try {
    await call;
    return "allowed";
  } catch (err) {
    if (!(err instanceof SwitchboardError)) throw err;
    return `${Code[err.code]} ${err.reason}`;
  }
}

const allocate = (c: ReturnType<typeof caller>) => outcome(c.allocateIds({ count: 1 }, { timeoutMs: 5_000 }));

describe("mTLS gRPC port", () => {
  const serverCert = pki.issue(caA, { uri: "switchboard://role:id", cn: "id" });
  const serverDir = pki.secretDir("server-good", serverCert, [caA]);

  it("admits a client certificate of the trusted CA as the principal it names (URI SAN, else CN)", async () => {
    const s = await tlsServer(serverDir);
    const gateway = pki.issue(caA, { uri: "switchboard://role:gateway", cn: "ignored-when-uri" });
    const operatorByCn = pki.issue(caA, { cn: "operator" });
    expect(await allocate(caller(s.address, caA, gateway))).toBe("allowed");
    const drain = grpcClient(GatewayService, s.address, {
      credentials: grpc.credentials.createSsl(
        Buffer.from(caA.cert),
        Buffer.from(operatorByCn.key),
        Buffer.from(operatorByCn.cert),
      ),
      serverName: "localhost",
    });
    opened.push(drain);
    await drain.drain({});
    expect(s.seen).toEqual(["allocate by role:gateway", "drain by operator"]);
  });

  it("authorizes a certificate's principal like a bearer's, and refuses one that names no principal", async () => {
    const s = await tlsServer(serverDir);
    const billing = pki.issue(caA, { uri: "switchboard://client:billing" });
    const nobody = pki.issue(caA, { cn: "not a principal" });
    expect(await allocate(caller(s.address, caA, billing))).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");
    expect(await allocate(caller(s.address, caA, nobody))).toBe("UNAUTHENTICATED CERTIFICATE_NO_PRINCIPAL");
    expect(s.seen).toEqual([]);
  });

  it("takes a bearer credential sent with a certificate only if it names the same principal", async () => {
    const s = await tlsServer(serverDir);
    const gateway = pki.issue(caA, { uri: "switchboard://role:gateway" });
    expect(await allocate(caller(s.address, caA, gateway, gatewayKey.key))).toBe("allowed");
    expect(await allocate(caller(s.address, caA, gateway, routerKey.key))).toBe(
      "UNAUTHENTICATED CONFLICTING_CREDENTIALS",
    );
    expect(s.seen).toEqual(["allocate by role:gateway"]);
  });

  it("refuses at the handshake a certificate of another CA, an expired one, and none at all", async () => {
    const s = await tlsServer(serverDir);
    const foreign = pki.issue(caB, { uri: "switchboard://role:gateway" });
    const expired = pki.issue(caA, { uri: "switchboard://role:gateway", expired: true });
    expect(await allocate(caller(s.address, caA, foreign))).toBe("UNAVAILABLE UNAVAILABLE");
    expect(await allocate(caller(s.address, caA, expired))).toBe("UNAVAILABLE UNAVAILABLE");
    expect(await allocate(caller(s.address, caA))).toBe("UNAVAILABLE UNAVAILABLE");
    const plaintext = grpcClient(IdService, s.address);
    opened.push(plaintext);
    expect(await allocate(plaintext)).toBe("UNAVAILABLE UNAVAILABLE");
    expect(s.seen).toEqual([]);
  });

  it("takes rotated files without a restart: the revoked CA's clients are refused, on open connections too", async () => {
    const dir = pki.secretDir("server-rotating", serverCert, [caA]);
    const s = await tlsServer(dir);
    const oldClient = caller(s.address, caA, pki.issue(caA, { uri: "switchboard://role:gateway" }));
    expect(await allocate(oldClient)).toBe("allowed");

    // cert-manager issued from a new CA and the old one is no longer trusted: one swap of ..data.
    pki.secretDir("server-rotating", pki.issue(caB, { uri: "switchboard://role:id" }), [caB]);
    await expect.poll(() => s.tls.directory.version.cas[0]?.subject, { timeout: 5_000 }).toBe("CN=ca-b");

    // The connection opened before the rotation stays up, but its calls are refused now.
    expect(await allocate(oldClient)).toBe("UNAUTHENTICATED CERTIFICATE_NOT_TRUSTED");
    const oldCertNewConnection = caller(
      s.address,
      caB,
      pki.issue(caA, { uri: "switchboard://role:gateway" }),
    );
    expect(await allocate(oldCertNewConnection)).toBe("UNAVAILABLE UNAVAILABLE");
    const newClient = caller(s.address, caB, pki.issue(caB, { uri: "switchboard://role:router" }));
    expect(await allocate(newClient)).toBe("allowed");
    expect(s.seen).toEqual(["allocate by role:gateway", "allocate by role:router"]);
  });

  it("keeps the last good version when a rotation is read half-way (a key that is not the certificate's)", async () => {
    const dir = pki.secretDir("server-torn", serverCert, [caA]);
    const s = await tlsServer(dir);
    const torn = { cert: pki.issue(caA, { uri: "switchboard://role:id" }).cert, key: caB.key };
    pki.secretDir("server-torn", torn, [caA]);
    await new Promise((r) => setTimeout(r, 400));
    expect(s.tls.directory.version.certificate.toString()).toBe(serverCert.cert);
    expect(
      await allocate(caller(s.address, caA, pki.issue(caA, { uri: "switchboard://role:gateway" }))),
    ).toBe("allowed");
  });
});

describe("TLS with optional client certificates (a port bearer callers share)", () => {
  const serverDir = pki.secretDir("server-optional", pki.issue(caA, { uri: "switchboard://role:id" }), [caA]);

  it("admits a bearer without a certificate, and a good certificate without a bearer", async () => {
    const s = await tlsServer(serverDir, "optional");
    expect(await allocate(caller(s.address, caA, undefined, gatewayKey.key))).toBe("allowed");
    expect(await allocate(caller(s.address, caA, pki.issue(caA, { uri: "switchboard://role:router" })))).toBe(
      "allowed",
    );
    expect(s.seen).toEqual(["allocate by role:gateway", "allocate by role:router"]);
  });

  it("takes no unverifiable certificate as a credential: another CA's, expired, not for clients", async () => {
    const s = await tlsServer(serverDir, "optional");
    const gateway = { uri: "switchboard://role:gateway" };
    expect(await allocate(caller(s.address, caA))).toBe("UNAUTHENTICATED UNAUTHENTICATED");
    for (const unverifiable of [
      pki.issue(caB, gateway),
      pki.issue(caA, { ...gateway, expired: true }),
      pki.issue(caA, { ...gateway, usages: "serverAuth" }),
    ]) {
      // The certificate names no one (the handshake could not verify it)...
      expect(await allocate(caller(s.address, caA, unverifiable))).toBe("UNAUTHENTICATED UNAUTHENTICATED");
      // ...so the call stands on its bearer alone.
      expect(await allocate(caller(s.address, caA, unverifiable, routerKey.key))).toBe("allowed");
    }
    expect(s.seen).toEqual(["allocate by role:router", "allocate by role:router", "allocate by role:router"]);
  });
});

describe("a role's calls over mTLS", () => {
  it("present the role's certificate and accept only a server whose certificate names the role called", async () => {
    const s = await tlsServer(
      pki.secretDir("server-id", pki.issue(caA, { uri: "switchboard://role:id" }), [caA]),
    );
    const gatewayTls = grpcTls(
      tlsConfig(pki.secretDir("gateway", pki.issue(caA, { uri: "switchboard://role:gateway" }), [caA])),
      log,
    )!;
    opened.push(gatewayTls);
    const toId = gatewayTls.channelTo("id");
    const ids = grpcClient(IdService, s.address, {
      credentials: toId.credentials,
      serverName: toId.serverName,
    });
    opened.push(ids);
    expect(await allocate(ids)).toBe("allowed");
    // The same server dialled as if it were the router: its certificate says role:id, so no.
    const asRouter = gatewayTls.channelTo("router");
    const wrong = grpcClient(IdService, s.address, {
      credentials: asRouter.credentials,
      serverName: asRouter.serverName,
    });
    opened.push(wrong);
    expect(await allocate(wrong)).toBe("UNAVAILABLE UNAVAILABLE");
    expect(s.seen).toEqual(["allocate by role:gateway"]);
  });
});
