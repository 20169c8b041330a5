/**
 * The authentication and authorization step of ADR 0007 on a real grpc-js server on loopback: every
 * call of a guarded server is admitted only with a credential of a principal the policy allows for the
 * method; a refused call gets UNAUTHENTICATED or PERMISSION_DENIED with its reason and never reaches
 * the handler; the health service stays public.
 */
import { afterEach, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../gen/grpc/health/v1/health_pb.js";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { callGuard } from "../../internal/grpc-auth/guard.js";
import { KeyFile, newKey } from "../../internal/grpc-auth/key-file.js";
import { inProcessCaller, type Policy } from "../../internal/grpc-auth/policy.js";
import { Code, SwitchboardError } from "../../internal/lib/errors.js";
import { createMetrics } from "../../internal/lib/metrics.js";
import {
  addService,
  type CallContext,
  grpcClient,
  guardServer,
  inProcessClient,
} from "../../internal/lib/rpc.js";
import { serveGrpc } from "../../internal/process/grpc.js";

const opened: Array<{ close(): unknown }> = [];
afterEach(async () => {
  for (const c of opened.splice(0).reverse()) await c.close();
});

const gateway = newKey("role:gateway");
const router = newKey("role:router");
const billing = newKey("client:billing");
const policy: Policy = {
  clients: new Map([
    [
      "billing",
      {
        permissions: new Set(["publish"] as const),
        sendAs: new Set(["bot:billing"]),
        conversations: "member" as const,
      },
    ],
  ]),
};

/** A guarded server with IdService and GatewayService; `seen` records who each handler ran for. */
async function guarded() {
  const running = await serveGrpc("127.0.0.1", 0, {
    metrics: createMetrics().grpc,
    reflection: false,
    serving: () => true,
  });
  opened.push(running);
  const keys = KeyFile.parse([gateway.line, router.line, billing.line].join("\n"));
  guardServer(running.server, callGuard([(bearer) => keys.verify(bearer)], policy));
  const seen: string[] = [];
  addService(running.server, IdService, {
    allocateIds: async (_req, ctx) => {
      seen.push(`allocate by ${ctx.principal}`);
      return { ids: ["1"] };
    },
  });
  addService(running.server, GatewayService, {
    deliver: async function* (requests, ctx) {
      seen.push(`deliver by ${ctx.principal}`);
      for await (const _ of requests) yield {};
    },
    drain: async (_req, ctx) => {
      seen.push(`drain by ${ctx.principal}`);
      return {};
    },
    stats: async () => ({}),
  });
  return { address: `127.0.0.1:${running.port}`, seen };
}

function client<S extends Parameters<typeof grpcClient>[0]>(service: S, address: string, key?: string) {
  const c = grpcClient(service, address, key === undefined ? {} : { bearer: () => key });
  opened.push(c);
  return c;
}

async function refusal(call: Promise<unknown>): Promise<string> {
  try {
    await call;
    return "allowed";
  } catch (err) {
    if (!(err instanceof SwitchboardError)) throw err;
    return `${Code[err.code]} ${err.reason}`;
  }
}

describe("guarded gRPC server", () => {
  it("admits a principal the policy allows and tells the handler who called", async () => {
    const s = await guarded();
    await client(IdService, s.address, gateway.key).allocateIds({ count: 1 });
    await client(GatewayService, s.address, router.key)
      .deliver((async function* () {})())
      [Symbol.asyncIterator]()
      .next();
    expect(s.seen).toEqual(["allocate by role:gateway", "deliver by role:router"]);
  });

  it("refuses calls without a valid credential, or by a principal without the method, before the handler", async () => {
    const s = await guarded();
    expect(await refusal(client(IdService, s.address).allocateIds({ count: 1 }))).toBe(
      "UNAUTHENTICATED UNAUTHENTICATED",
    );
    expect(await refusal(client(IdService, s.address, "not-a-key").allocateIds({ count: 1 }))).toBe(
      "UNAUTHENTICATED INVALID_CREDENTIALS",
    );
    expect(await refusal(client(IdService, s.address, billing.key).allocateIds({ count: 1 }))).toBe(
      "PERMISSION_DENIED METHOD_NOT_ALLOWED",
    );
    // Internal-only methods: only the router may open Deliver, only the operator may Drain.
    const deliver = client(GatewayService, s.address, gateway.key).deliver((async function* () {})());
    expect(await refusal(deliver[Symbol.asyncIterator]().next())).toBe(
      "PERMISSION_DENIED METHOD_NOT_ALLOWED",
    );
    expect(await refusal(client(GatewayService, s.address, router.key).drain({}))).toBe(
      "PERMISSION_DENIED METHOD_NOT_ALLOWED",
    );
    expect(s.seen).toEqual([]);
  });

  it("tells its caller UNAVAILABLE (retry in 1 s) when a peer refuses this server's own credential", async () => {
    const peer = await guarded();
    // A server whose handler calls the peer with a credential the peer refuses for the method.
    const middle = await serveGrpc("127.0.0.1", 0, {
      metrics: createMetrics().grpc,
      reflection: false,
      serving: () => true,
    });
    opened.push(middle);
    const toPeer = client(IdService, peer.address, billing.key);
    addService(middle.server, IdService, { allocateIds: (req) => toPeer.allocateIds(req) });
    const err = await client(IdService, `127.0.0.1:${middle.port}`)
      .allocateIds({ count: 1 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SwitchboardError);
    expect(err).toMatchObject({ code: Code.UNAVAILABLE, reason: "UNAVAILABLE", retryAfterMs: 1000 });
    expect(peer.seen).toEqual([]);
  });

  it("keeps the health service public", async () => {
    const s = await guarded();
    const res = await client(Health, s.address).check({ service: "" });
    expect(res.status).toBe(Serving.SERVING);
  });
});

describe("in-process calls (the all-in-one process)", () => {
  it("are checked against the same table, as the role whose code makes them", async () => {
    const seen: string[] = [];
    const impl = {
      deliver: async function* (requests: AsyncIterable<unknown>, ctx: CallContext) {
        seen.push(`deliver by ${ctx.principal}`);
        for await (const _ of requests) yield {};
      },
      drain: async (_req: unknown, ctx: CallContext) => {
        seen.push(`drain by ${ctx.principal}`);
        return {};
      },
      stats: async () => ({}),
    };
    const asRouter = inProcessClient(GatewayService, impl, inProcessCaller("role:router"));
    const asGateway = inProcessClient(GatewayService, impl, inProcessCaller("role:gateway"));
    for await (const _ of asRouter.deliver((async function* () {})()));
    expect(await refusal(asRouter.drain({}))).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");
    const denied = asGateway.deliver((async function* () {})());
    expect(await refusal(denied[Symbol.asyncIterator]().next())).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");
    expect(seen).toEqual(["deliver by role:router"]);
  });
});
