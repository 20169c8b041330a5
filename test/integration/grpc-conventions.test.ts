/**
 * The gRPC conventions of lib/rpc.ts and process/grpc.ts against real grpc-js servers on loopback
 * (the servers every process runs, with test implementations behind them): deadlines honoured and
 * propagated, rich error details on the wire and back, per-method metrics, the health service,
 * server reflection, and keepalive pings that find a connection the network dropped silently. test/integration/grpc-process.test.ts checks the same on `switchboard start`.
 */

import * as net from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { anyUnpack, durationMs, FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { afterEach, describe, expect, it, vi } from "vitest";
import { ErrorInfoSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../gen/grpc/health/v1/health_pb.js";
import { ServerReflection as ReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ReflectionV1alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import {
  type AllocateIdsRequest,
  AllocateIdsRequestSchema,
  AllocateIdsResponseSchema,
  IdService,
} from "../../gen/switchboard/id/v1/id_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { AsyncQueue } from "../../internal/lib/async-queue.js";
import { Code, SwitchboardError } from "../../internal/lib/errors.js";
import { createMetrics, type Metrics } from "../../internal/lib/metrics.js";
import {
  addService,
  type CallContext,
  grpcClient,
  type Keepalive,
  type ServiceImpl,
} from "../../internal/lib/rpc.js";
import { type RunningGrpc, serveGrpc } from "../../internal/process/grpc.js";
import { sampleOf } from "../helpers/metrics.js";
import { TcpProxy } from "../helpers/tcp-proxy.js";

interface TestServer extends RunningGrpc {
  address: string;
  metrics: Metrics;
}

const opened: Array<{ close(): unknown }> = [];
afterEach(async () => {
  for (const c of opened.splice(0).reverse()) await c.close();
});

async function serve(
  options: {
    reflection?: boolean;
    serving?: () => boolean;
    keepalive?: Keepalive;
    serves?: Array<typeof IdService>;
  } = {},
  ...services: Array<[typeof IdService, ServiceImpl<typeof IdService>]>
): Promise<TestServer> {
  const metrics = createMetrics();
  const running = await serveGrpc("127.0.0.1", 0, {
    metrics: metrics.grpc,
    reflection: options.reflection ?? false,
    serving: options.serving ?? (() => true),
    keepalive: options.keepalive,
    serves: options.serves,
  });
  for (const [service, impl] of services) addService(running.server, service, impl);
  opened.push(running);
  return { ...running, address: `127.0.0.1:${running.port}`, metrics };
}

function client<S extends Parameters<typeof grpcClient>[0]>(service: S, address: string, metrics?: Metrics) {
  const c = grpcClient(service, address, metrics ? { metrics: metrics.grpc } : {});
  opened.push(c);
  return c;
}

/** An IdService whose AllocateIds runs `fn`. */
function ids(fn: (req: AllocateIdsRequest, ctx: CallContext) => Promise<{ ids: string[] }>) {
  return [IdService, { allocateIds: fn }] as [typeof IdService, ServiceImpl<typeof IdService>];
}

/** Resolves with the signal's reason when it aborts. */
function aborted(signal: AbortSignal): Promise<unknown> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve(signal.reason);
    signal.addEventListener("abort", () => resolve(signal.reason), { once: true });
  });
}

/** The value of a series in a registry's exposition (name{labels} exactly as prom-client prints it). */
async function sample(metrics: Metrics, series: string): Promise<number | undefined> {
  return sampleOf(await metrics.registry.metrics(), series);
}

const ID_LABELS = 'grpc_type="unary",grpc_service="switchboard.id.v1.IdService",grpc_method="AllocateIds"';

/** A plain grpc-js unary call to AllocateIds, to see the raw status and trailers. */
function rawAllocate(address: string, deadlineMs = 5_000): Promise<grpc.ServiceError> {
  const raw = new grpc.Client(address, grpc.credentials.createInsecure());
  opened.push(raw);
  return new Promise((resolve, reject) => {
    raw.makeUnaryRequest(
      "/switchboard.id.v1.IdService/AllocateIds",
      (m: unknown) => Buffer.from(toBinary(AllocateIdsRequestSchema, m as AllocateIdsRequest)),
      (b: Buffer) => fromBinary(AllocateIdsResponseSchema, b),
      create(AllocateIdsRequestSchema, { count: 1 }),
      new grpc.Metadata(),
      { deadline: Date.now() + deadlineMs },
      (err) => (err ? resolve(err) : reject(new Error("the call succeeded"))),
    );
  });
}

describe("statuses grpc-js makes itself", () => {
  it("an unreachable peer: the code's name as reason, retry in a second, and a client is told the call, not the address", async () => {
    const closed = net.createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as net.AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    const err = await client(IdService, `127.0.0.1:${port}`)
      .allocateIds({ count: 1 }, { timeoutMs: 2_000 })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(SwitchboardError);
    expect(err).toMatchObject({ code: Code.UNAVAILABLE, reason: "UNAVAILABLE", retryAfterMs: 1_000 });
    const { publicMessage, message } = err as SwitchboardError;
    // What a client would be told; grpc-js's own text, with the peer's address, stays for this
    // process's logs.
    expect(publicMessage).toBe("internal call switchboard.id.v1.IdService/AllocateIds failed: UNAVAILABLE");
    expect(message).toContain(publicMessage);
    expect(message).toContain(String(port));
  });
});

describe("deadlines", () => {
  it("abort the handler's signal at the caller's deadline, which gets DEADLINE_EXCEEDED", async () => {
    let seen: { reason: unknown; deadline: number | undefined; at: number } | undefined;
    const server = await serve(
      {},
      ids(async (_req, ctx) => {
        const reason = await aborted(ctx.signal);
        seen = { reason, deadline: ctx.deadline, at: Date.now() };
        throw reason;
      }),
    );
    const callerMetrics = createMetrics();
    const t0 = Date.now();
    await expect(
      client(IdService, server.address, callerMetrics).allocateIds({ count: 1 }, { timeoutMs: 300 }),
    ).rejects.toMatchObject({ code: Code.DEADLINE_EXCEEDED, reason: "DEADLINE_EXCEEDED" });
    expect(Date.now() - t0).toBeLessThan(2_000);
    await expect.poll(() => seen).toBeDefined();
    expect(seen!.reason).toMatchObject({ code: Code.DEADLINE_EXCEEDED, reason: "DEADLINE_EXCEEDED" });
    expect(seen!.deadline).toBeGreaterThanOrEqual(t0 + 250);
    expect(seen!.deadline).toBeLessThanOrEqual(t0 + 400);
    expect(seen!.at - t0).toBeLessThan(1_000);
    // Both sides count the call as DeadlineExceeded.
    await expect
      .poll(() =>
        sample(server.metrics, `grpc_server_handled_total{${ID_LABELS},grpc_code="DeadlineExceeded"}`),
      )
      .toBe(1);
    expect(
      await sample(callerMetrics, `grpc_client_handled_total{${ID_LABELS},grpc_code="DeadlineExceeded"}`),
    ).toBe(1);
  });

  it("bound the calls a handler makes on the request's behalf, across a second hop", async () => {
    const downstream: Array<{ deadline: number | undefined; reason?: unknown; at?: number }> = [];
    let waitForAbort = false;
    const b = await serve(
      {},
      ids(async (_req, ctx) => {
        const entry: (typeof downstream)[number] = { deadline: ctx.deadline };
        downstream.push(entry);
        if (waitForAbort) {
          entry.reason = await aborted(ctx.signal);
          entry.at = Date.now();
          throw entry.reason;
        }
        return { ids: ["1"] };
      }),
    );
    const toB = client(IdService, b.address);
    let upstream: { deadline: number | undefined } | undefined;
    let onBehalf = true;
    const a = await serve(
      {},
      ids(async (_req, ctx) => {
        upstream = { deadline: ctx.deadline };
        await new Promise((r) => setTimeout(r, 50));
        // No timeoutMs: the client's default (10 s) would apply, but this call's caller gives up sooner.
        return onBehalf
          ? toB.allocateIds({ count: 1 }, { deadline: ctx.deadline })
          : toB.allocateIds({ count: 1 });
      }),
    );
    const toA = client(IdService, a.address);

    const t0 = Date.now();
    await toA.allocateIds({ count: 1 }, { timeoutMs: 2_000 });
    expect(upstream!.deadline).toBeGreaterThan(t0 + 1_900);
    // B's deadline is A's (the remaining time travels as grpc-timeout: rounding, transit and event-loop lag).
    expect(Math.abs(downstream[0]!.deadline! - upstream!.deadline!)).toBeLessThan(200);

    // A call not made on the caller's behalf (work shared by many callers) keeps its own default.
    onBehalf = false;
    await toA.allocateIds({ count: 1 }, { timeoutMs: 2_000 });
    expect(downstream[1]!.deadline! - Date.now()).toBeGreaterThan(8_000);
    onBehalf = true;

    // When the first caller's deadline passes, the second hop's handler is told at once, not 10 s later.
    waitForAbort = true;
    const t1 = Date.now();
    await expect(toA.allocateIds({ count: 1 }, { timeoutMs: 500 })).rejects.toMatchObject({
      code: Code.DEADLINE_EXCEEDED,
    });
    await expect.poll(() => downstream[2]?.at).toBeDefined();
    expect(downstream[2]!.reason).toMatchObject({ code: Code.DEADLINE_EXCEEDED });
    expect(downstream[2]!.at! - t1).toBeLessThan(1_500);
  });
});

describe("error details", () => {
  it("carry google.rpc.Status with ErrorInfo and RetryInfo in grpc-status-details-bin", async () => {
    const server = await serve(
      {},
      ids(async () => {
        throw new SwitchboardError(Code.RESOURCE_EXHAUSTED, "GROUP_FULL", "the group is full", {
          retryAfterMs: 1_500,
          metadata: { conversationId: "g:7" },
        });
      }),
    );
    const err = await rawAllocate(server.address);
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    const bytes = err.metadata.get("grpc-status-details-bin")[0];
    expect(bytes).toBeInstanceOf(Buffer);
    const status = fromBinary(StatusSchema, bytes as Buffer);
    expect(status.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(status.message).toBe("the group is full");
    expect(status.details.map((d) => d.typeUrl)).toEqual([
      "type.googleapis.com/google.rpc.ErrorInfo",
      "type.googleapis.com/google.rpc.RetryInfo",
    ]);
    const info = anyUnpack(status.details[0]!, ErrorInfoSchema)!;
    expect({ reason: info.reason, domain: info.domain, metadata: info.metadata }).toEqual({
      reason: "GROUP_FULL",
      domain: "switchboard.dev",
      metadata: { conversationId: "g:7" },
    });
    expect(durationMs(anyUnpack(status.details[1]!, RetryInfoSchema)!.retryDelay!)).toBe(1_500);

    // Our client turns them back into the error that was thrown.
    const back = await client(IdService, server.address)
      .allocateIds({ count: 1 })
      .catch((e: unknown) => e);
    expect(back).toBeInstanceOf(SwitchboardError);
    expect(back).toMatchObject({
      code: Code.RESOURCE_EXHAUSTED,
      reason: "GROUP_FULL",
      message: "the group is full",
      retryAfterMs: 1_500,
      metadata: { conversationId: "g:7" },
    });
  });

  it("say INTERNAL for unexpected errors, without their text", async () => {
    const server = await serve(
      {},
      ids(async () => {
        throw new Error("connection to 10.1.2.3 refused, password=hunter2");
      }),
    );
    const err = await rawAllocate(server.address);
    expect(err.code).toBe(grpc.status.INTERNAL);
    expect(err.details).toBe("internal error");
    const status = fromBinary(StatusSchema, err.metadata.get("grpc-status-details-bin")[0] as Buffer);
    expect(anyUnpack(status.details[0]!, ErrorInfoSchema)).toMatchObject({
      reason: "INTERNAL",
      domain: "switchboard.dev",
    });
  });

  it("keep the reason across a hop, and name the code where grpc-js made the status", async () => {
    const b = await serve(
      {},
      ids(async () => {
        throw new SwitchboardError(Code.NOT_FOUND, "GROUP_NOT_FOUND", "no group g:9", {
          metadata: { conversationId: "g:9" },
        });
      }),
    );
    const toB = client(IdService, b.address);
    const a = await serve(
      {},
      ids((_req) => toB.allocateIds({ count: 1 })),
    );
    await expect(client(IdService, a.address).allocateIds({ count: 1 })).rejects.toMatchObject({
      code: Code.NOT_FOUND,
      reason: "GROUP_NOT_FOUND",
      metadata: { conversationId: "g:9" },
    });
    // A method the server lacks: grpc-js answers UNIMPLEMENTED itself, with no details.
    await expect(
      client(RouterService, a.address).sendMessage({ conversationId: "g:1" }),
    ).rejects.toMatchObject({ code: Code.UNIMPLEMENTED, reason: "UNIMPLEMENTED" });
  });

  it("answer a service the process will serve UNAVAILABLE until its role adds it, which a spread client retries on another replica", async () => {
    const starting = await serve({ serves: [IdService] });
    const ready = await serve(
      {},
      ids(async () => ({ ids: ["7"] })),
    );
    await expect(client(IdService, starting.address).allocateIds({ count: 1 })).rejects.toMatchObject({
      code: Code.UNAVAILABLE,
      reason: "UNAVAILABLE",
      retryAfterMs: 1_000,
      message: "switchboard.id.v1.IdService is starting: not serving yet",
    });
    // Round robin over both: every call that reaches the starting one is retried on the other.
    const spread = grpcClient(IdService, `ipv4:${starting.address},${ready.address}`, { spread: true });
    opened.push(spread);
    for (let i = 0; i < 10; i++) expect((await spread.allocateIds({ count: 1 })).ids).toEqual(["7"]);
    addService(starting.server, IdService, { allocateIds: async () => ({ ids: ["8"] }) });
    expect((await client(IdService, starting.address).allocateIds({ count: 1 })).ids).toEqual(["8"]);
  });
});

describe("metrics", () => {
  it("count started and handled calls by method and code, and their latency, on both sides", async () => {
    let n = 0;
    const server = await serve(
      {},
      ids(async () => {
        if (++n % 2 === 0)
          throw new SwitchboardError(Code.INVALID_ARGUMENT, "COUNT_OUT_OF_RANGE", "bad count");
        return { ids: [String(n)] };
      }),
    );
    const callerMetrics = createMetrics();
    const c = client(IdService, server.address, callerMetrics);
    for (let i = 0; i < 4; i++) await c.allocateIds({ count: 1 }).catch(() => undefined);
    const s = server.metrics;
    expect(await sample(s, `grpc_server_started_total{${ID_LABELS}}`)).toBe(4);
    expect(await sample(s, `grpc_server_handled_total{${ID_LABELS},grpc_code="OK"}`)).toBe(2);
    expect(await sample(s, `grpc_server_handled_total{${ID_LABELS},grpc_code="InvalidArgument"}`)).toBe(2);
    expect(await sample(s, `grpc_server_handling_seconds_count{${ID_LABELS}}`)).toBe(4);
    expect(await sample(s, `grpc_server_msg_received_total{${ID_LABELS}}`)).toBe(4);
    expect(await sample(s, `grpc_server_msg_sent_total{${ID_LABELS}}`)).toBe(2);
    // Served but never called: present at zero.
    expect(
      await sample(
        s,
        'grpc_server_started_total{grpc_type="server_stream",grpc_service="grpc.health.v1.Health",grpc_method="Watch"}',
      ),
    ).toBe(0);
    expect(await sample(callerMetrics, `grpc_client_started_total{${ID_LABELS}}`)).toBe(4);
    expect(await sample(callerMetrics, `grpc_client_handled_total{${ID_LABELS},grpc_code="OK"}`)).toBe(2);
    expect(await sample(callerMetrics, `grpc_client_handling_seconds_count{${ID_LABELS}}`)).toBe(4);
  });
});

describe("metrics of streams", () => {
  it("count a stream its client cancelled as Canceled, and one it half-closed as OK", async () => {
    // A handler that answers each request and ends when its requests end, as StreamEvents does.
    const deliver: ServiceImpl<typeof GatewayService>["deliver"] = async function* (requests) {
      for await (const _ of requests) yield { delivered: 1 };
    };
    const unused = async () => {
      throw new Error("not called");
    };
    const server = await serve({}, [GatewayService, { deliver, drain: unused, stats: unused }] as unknown as [
      typeof IdService,
      ServiceImpl<typeof IdService>,
    ]);
    const c = client(GatewayService, server.address);
    const handled = (code: string) =>
      sample(
        server.metrics,
        `grpc_server_handled_total{grpc_type="bidi_stream",grpc_service="switchboard.gateway.v1.GatewayService",grpc_method="Deliver",grpc_code="${code}"}`,
      );

    const cancel = new AbortController();
    const open = new AsyncQueue<{ userIds: string[] }>(8);
    open.push({ userIds: ["u"] });
    const responses = c.deliver(open, { signal: cancel.signal })[Symbol.asyncIterator]();
    expect((await responses.next()).value).toMatchObject({ delivered: 1 });
    cancel.abort();
    await responses.next().catch(() => undefined);
    await vi.waitFor(async () => expect(await handled("Canceled")).toBe(1));

    const closed = new AsyncQueue<{ userIds: string[] }>(8);
    closed.push({ userIds: ["u"] });
    closed.end();
    for await (const r of c.deliver(closed)) expect(r).toMatchObject({ delivered: 1 });
    await vi.waitFor(async () => expect(await handled("OK")).toBe(1));
    expect(await handled("Canceled")).toBe(1);
  });
});

describe("health", () => {
  it("answers NOT_SERVING for a service declared but not added yet (its role starting), SERVING once added", async () => {
    const server = await serve({ serves: [IdService] });
    const health = client(Health, server.address);
    // The process reports ready here, yet the service is not there: its own status says so.
    expect((await health.check({ service: "" })).status).toBe(Serving.SERVING);
    expect((await health.check({ service: "switchboard.id.v1.IdService" })).status).toBe(Serving.NOT_SERVING);
    const [service, impl] = ids(async () => ({ ids: [] }));
    addService(server.server, service, impl);
    expect((await health.check({ service: "switchboard.id.v1.IdService" })).status).toBe(Serving.SERVING);
  });

  it("answers Check and Watch for the server and each service, in step with readiness", async () => {
    let ready = false;
    const server = await serve(
      { serving: () => ready },
      ids(async () => ({ ids: [] })),
    );
    const health = client(Health, server.address);
    expect((await health.check({ service: "" })).status).toBe(Serving.NOT_SERVING);
    ready = true;
    expect((await health.check({ service: "" })).status).toBe(Serving.SERVING);
    expect((await health.check({ service: "switchboard.id.v1.IdService" })).status).toBe(Serving.SERVING);
    expect((await health.check({ service: "grpc.health.v1.Health" })).status).toBe(Serving.SERVING);
    await expect(health.check({ service: "switchboard.nope.v1.Nope" })).rejects.toMatchObject({
      code: Code.NOT_FOUND,
      reason: "SERVICE_UNKNOWN",
    });

    const seen: Serving[] = [];
    const unknown: Serving[] = [];
    const watching = (async () => {
      for await (const r of health.watch({ service: "switchboard.id.v1.IdService" })) seen.push(r.status);
    })();
    const watchingUnknown = (async () => {
      for await (const r of health.watch({ service: "switchboard.nope.v1.Nope" })) unknown.push(r.status);
    })();
    await expect.poll(() => seen).toEqual([Serving.SERVING]);
    await expect.poll(() => unknown).toEqual([Serving.SERVICE_UNKNOWN]);
    // Readiness is polled: a change reaches watchers within about a second, or at once when told.
    ready = false;
    await expect.poll(() => seen, { timeout: 3_000 }).toEqual([Serving.SERVING, Serving.NOT_SERVING]);
    ready = true;
    server.health.changed();
    await expect
      .poll(() => seen, { timeout: 500 })
      .toEqual([Serving.SERVING, Serving.NOT_SERVING, Serving.SERVING]);
    // Closing the server ends every Watch with a last NOT_SERVING, so shutdown does not wait for them.
    const t0 = Date.now();
    await server.close();
    await watching;
    await watchingUnknown;
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(seen.at(-1)).toBe(Serving.NOT_SERVING);
  });
});

describe("reflection", () => {
  /** A stub of every RouterService method (reflection only reads the descriptors). */
  const routerStub = Object.fromEntries(
    RouterService.methods.map((m) => [m.localName, async () => ({})]),
  ) as unknown as ServiceImpl<typeof RouterService>;

  async function ask(address: string, questions: object[], alpha = false) {
    const c = alpha ? client(ReflectionV1alpha, address) : client(ReflectionV1, address);
    const out = [];
    async function* requests() {
      for (const q of questions) yield q as never;
    }
    for await (const r of (c.serverReflectionInfo as (x: unknown) => AsyncIterable<unknown>)(requests()))
      out.push(r as { messageResponse: { case: string; value: Record<string, unknown> } });
    return out;
  }

  it("is served only when asked", async () => {
    const off = await serve(
      {},
      ids(async () => ({ ids: [] })),
    );
    await expect(
      ask(off.address, [{ messageRequest: { case: "listServices", value: "" } }]),
    ).rejects.toMatchObject({ code: Code.UNIMPLEMENTED });
  });

  it("lists the services and returns the descriptors that define a file, a symbol or a method", async () => {
    const server = await serve(
      { reflection: true },
      ids(async () => ({ ids: [] })),
    );
    addService(server.server, RouterService, routerStub);
    for (const alpha of [false, true]) {
      const [list, bySymbol, again, byFile, byMethod, missing] = await ask(
        server.address,
        [
          { messageRequest: { case: "listServices", value: "" } },
          { messageRequest: { case: "fileContainingSymbol", value: "switchboard.router.v1.RouterService" } },
          {
            messageRequest: {
              case: "fileContainingSymbol",
              value: "switchboard.router.v1.SendMessageRequest",
            },
          },
          { messageRequest: { case: "fileByFilename", value: "switchboard/common/v1/common.proto" } },
          {
            messageRequest: {
              case: "fileContainingSymbol",
              value: "switchboard.id.v1.IdService.AllocateIds",
            },
          },
          { messageRequest: { case: "fileContainingSymbol", value: "switchboard.nope.Nope" } },
        ],
        alpha,
      );
      expect(list!.messageResponse.case).toBe("listServicesResponse");
      expect((list!.messageResponse.value.service as Array<{ name: string }>).map((s) => s.name)).toEqual([
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "switchboard.id.v1.IdService",
        "switchboard.router.v1.RouterService",
      ]);
      const names = (r: typeof list) =>
        (r!.messageResponse.value.fileDescriptorProto as Uint8Array[]).map(
          (b) => fromBinary(FileDescriptorProtoSchema, b).name,
        );
      // The file first, then its imports (transitively); on the same stream, imports are sent once.
      expect(names(bySymbol)[0]).toBe("switchboard/router/v1/router.proto");
      expect(names(bySymbol)).toEqual(
        expect.arrayContaining(["switchboard/common/v1/common.proto", "switchboard/client/v1/client.proto"]),
      );
      expect(names(again)).toEqual(["switchboard/router/v1/router.proto"]);
      expect(names(byFile)).toEqual(["switchboard/common/v1/common.proto"]);
      expect(names(byMethod)).toEqual(["switchboard/id/v1/id.proto"]);
      const router = fromBinary(
        FileDescriptorProtoSchema,
        (bySymbol!.messageResponse.value.fileDescriptorProto as Uint8Array[])[0]!,
      );
      expect(router.service[0]!.method.map((m) => m.name)).toContain("SendMessage");
      expect(missing!.messageResponse).toMatchObject({
        case: "errorResponse",
        value: { errorCode: grpc.status.NOT_FOUND },
      });
    }
  });
});

describe("keepalive", () => {
  // A proxy that can forget its open flows: no FIN, no RST, new connections still work.
  async function proxyTo(address: string): Promise<TcpProxy> {
    const proxy = await TcpProxy.start(Number(address.split(":")[1]));
    opened.push(proxy);
    return proxy;
  }
  const PINGS: Keepalive = { timeMs: 1_000, timeoutMs: 1_000 };

  it("lets a client's calls reach the server again soon after the network dropped its connection silently", async () => {
    const server = await serve(
      {},
      ids(async () => ({ ids: ["1"] })),
    );
    const proxy = await proxyTo(server.address);
    const c = grpcClient(IdService, proxy.address, { keepalive: PINGS });
    opened.push(c);
    expect((await c.allocateIds({ count: 1 })).ids).toEqual(["1"]);
    expect(proxy.blackholeOpen()).toBe(1);
    const cutAt = Date.now();
    // Calls on the dead connection time out until a ping goes unanswered (1 s + 1 s) and the
    // channel connects again; gRPC's usual 30 s + 20 s would keep them failing for 50 s.
    let answered = false;
    while (!answered && Date.now() - cutAt < 10_000) {
      answered = await c.allocateIds({ count: 1 }, { timeoutMs: 500 }).then(
        () => true,
        () => false,
      );
    }
    expect(answered).toBe(true);
    expect(Date.now() - cutAt).toBeLessThan(6_000);
  });

  it("ends a call whose caller the network dropped silently", async () => {
    let calls = 0;
    let signal: AbortSignal | undefined;
    const server = await serve(
      { keepalive: PINGS },
      ids(async (_req, ctx) => {
        calls++;
        signal = ctx.signal;
        await aborted(ctx.signal);
        return { ids: [] };
      }),
    );
    const proxy = await proxyTo(server.address);
    // The caller itself does not ping (gRPC's default 30 s): the server's pings find the loss.
    const c = client(IdService, proxy.address);
    void c.allocateIds({ count: 1 }, { timeoutMs: 60_000 }).catch(() => undefined);
    await expect.poll(() => calls).toBe(1);
    proxy.blackholeOpen();
    await expect.poll(() => signal?.aborted, { timeout: 6_000 }).toBe(true);
  });
});
