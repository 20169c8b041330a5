/**
 * One small generic adapter between protobuf-es service descriptors and @grpc/grpc-js, so no
 * service has hand-written per-method boilerplate. The same `ServiceClient<S>` type is produced
 * by `grpcClient` (across processes) and `inProcessClient` (all-in-one mode), which is how the
 * single-process platform is wired through the very interfaces the cluster uses.
 *
 * The gRPC conventions live here too, so every service gets them: deadlines (a handler's signal
 * aborts at the caller's deadline, and a unary call made on its behalf with `{ deadline:
 * ctx.deadline }` carries what is left of it),
 * rich error details (google.rpc.Status with an ErrorInfo in `grpc-status-details-bin`, decoded back
 * into the SwitchboardError that was thrown), per-method Prometheus metrics, and the list of the
 * services a server serves (for reflection and health).
 */
import { type EventEmitter, once } from "node:events";
import {
  create,
  type DescMessage,
  type DescMethod,
  type DescService,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { Code, errors, forClients, SwitchboardError } from "./errors.js";
import type { GrpcMetrics } from "./metrics.js";
import { type MethodMeter, methodMeter } from "./rpc-metrics.js";
import { decodeStatusDetails, encodeStatusDetails, STATUS_DETAILS_KEY } from "./status-details.js";
import { activeCarrier, context, inSpan, ROOT_CONTEXT, SpanKind, trace, tracing } from "./tracing.js";

/** Per-call context handed to service implementations. */
export interface CallContext {
  /**
   * Aborted when the caller cancels (reason: a CANCELLED SwitchboardError) or its deadline passes
   * (DEADLINE_EXCEEDED); a handler that waits should stop then, nobody reads its answer any more.
   */
  readonly signal: AbortSignal;
  /** Remote address for gRPC calls, "in-process" otherwise. */
  readonly peer: string;
  /** The caller's deadline in milliseconds since the epoch; undefined when it set none. */
  readonly deadline?: number | undefined;
  /** Who called, on a guarded server (ADR 0007); undefined on an unguarded one or in process. */
  readonly principal?: string | undefined;
  /**
   * Checks the call's credential again, as its start did (a long stream outlives a removed key, an
   * expired or rotated-out certificate, a deleted ServiceAccount): rejects with the guard's refusal.
   * Undefined on an unguarded server or in process.
   */
  readonly reauthenticate?: (() => Promise<void>) | undefined;
}

/** Per-call options for clients. */
export interface CallOptions {
  /**
   * Milliseconds until the call fails with DEADLINE_EXCEEDED (default 10 s for unary calls, none for
   * streams).
   */
  timeoutMs?: number;
  /**
   * A deadline (ms since the epoch) the call must not outlive: a handler passes its own `ctx.deadline`
   * to the unary calls it makes on its caller's behalf, whose answer nobody reads after that. Passed
   * explicitly, not found in an AsyncLocalStorage scope: on Node 20 one such scope turns on promise
   * hooks for the whole process, which cost a gateway about a tenth of its CPU per message.
   */
  deadline?: number | undefined;
  signal?: AbortSignal;
}

type Unary<I extends DescMessage, O extends DescMessage> = { methodKind: "unary"; input: I; output: O };
type ServerStreaming<I extends DescMessage, O extends DescMessage> = {
  methodKind: "server_streaming";
  input: I;
  output: O;
};
type Bidi<I extends DescMessage, O extends DescMessage> = {
  methodKind: "bidi_streaming";
  input: I;
  output: O;
};

/** What a service implementation provides, method by method. */
export type ServiceImpl<S extends DescService> = {
  [K in keyof S["method"]]: S["method"][K] extends Unary<infer I, infer O>
    ? (request: MessageShape<I>, ctx: CallContext) => Promise<MessageInitShape<O>>
    : S["method"][K] extends ServerStreaming<infer I, infer O>
      ? (request: MessageShape<I>, ctx: CallContext) => AsyncIterable<MessageInitShape<O>>
      : S["method"][K] extends Bidi<infer I, infer O>
        ? (requests: AsyncIterable<MessageShape<I>>, ctx: CallContext) => AsyncIterable<MessageInitShape<O>>
        : never;
};

/** What callers of a service see, whether it runs in this process or behind gRPC. */
export type ServiceClient<S extends DescService> = {
  [K in keyof S["method"]]: S["method"][K] extends Unary<infer I, infer O>
    ? (request: MessageInitShape<I>, options?: CallOptions) => Promise<MessageShape<O>>
    : S["method"][K] extends ServerStreaming<infer I, infer O>
      ? (request: MessageInitShape<I>, options?: CallOptions) => AsyncIterable<MessageShape<O>>
      : S["method"][K] extends Bidi<infer I, infer O>
        ? (
            requests: AsyncIterable<MessageInitShape<I>>,
            options?: CallOptions,
          ) => AsyncIterable<MessageShape<O>>
        : never;
};

const DEFAULT_UNARY_TIMEOUT_MS = 10_000;
/**
 * The reason trailer of releases before the ErrorInfo details: still sent, so that a process of the
 * previous release keeps the reason during a rolling update, and still read, for the same reason.
 */
const LEGACY_REASON_KEY = "switchboard-reason";
/**
 * A cancel that arrives this close to the deadline is the caller's own deadline timer (the caller's
 * clock runs a transit time ahead of ours), so it counts as DEADLINE_EXCEEDED, not CANCELLED.
 */
const DEADLINE_SLACK_MS = 20;

/** A method's gRPC path, `/package.Service/Method`: what a server routes and a policy names. */
function pathOf(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

function isSupported(method: DescMethod): boolean {
  return method.methodKind !== "client_streaming";
}

async function* mapAsync<A, B>(source: AsyncIterable<A>, fn: (a: A) => B): AsyncIterable<B> {
  for await (const item of source) yield fn(item);
}

type AnyFn = (...args: unknown[]) => unknown;
function methodOf(impl: object, method: DescMethod): AnyFn {
  const fn = (impl as Record<string, unknown>)[method.localName];
  if (typeof fn !== "function")
    throw new Error(`service implementation lacks ${method.parent.typeName}.${method.name}`);
  return fn.bind(impl) as AnyFn;
}

const deadlineExceeded = () =>
  new SwitchboardError(Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "the caller's deadline passed");
const cancelled = () => new SwitchboardError(Code.CANCELLED, "CANCELLED", "call cancelled");

// ---- in-process transport ----------------------------------------------------------------------

/**
 * Who makes the calls of an in-process client, and the check they pass (ADR 0007): the all-in-one
 * process authorizes its in-process calls like the cluster's, so a policy gap shows in either shape.
 * `admit` throws the refusal.
 */
export interface InProcessCaller {
  readonly principal: string;
  admit(path: string): void;
}

/** The signal of in-process unary calls made without one: nothing ever aborts it. */
const NEVER_ABORTED = new AbortController().signal;

/** Calls an implementation directly, with the same message normalisation gRPC would apply. */
export function inProcessClient<S extends DescService>(
  service: S,
  impl: ServiceImpl<S>,
  caller?: InProcessCaller,
): ServiceClient<S> {
  const client: Record<string, unknown> = {};
  const ctxOf = (opts: CallOptions | undefined, unary: boolean): CallContext => ({
    // An in-process unary call without a signal is never cancelled, and its handler only reads
    // `aborted` (a listener would outlive the call): one shared signal saves an AbortController per
    // call on paths such as every offline member's notification. Streams get their own.
    signal: opts?.signal ?? (unary ? NEVER_ABORTED : new AbortController().signal),
    peer: "in-process",
    deadline: opts?.deadline,
    principal: caller?.principal,
  });
  for (const method of service.methods) {
    if (!isSupported(method)) continue;
    const fn = methodOf(impl, method);
    const path = pathOf(method);
    if (method.methodKind === "unary") {
      client[method.localName] = async (req: MessageInitShape<DescMessage>, opts?: CallOptions) => {
        caller?.admit(path);
        const res = await (fn(create(method.input, req), ctxOf(opts, true)) as Promise<object>);
        return create(method.output, res as MessageInitShape<DescMessage>);
      };
    } else {
      client[method.localName] = (reqs: unknown, opts?: CallOptions) => {
        const input =
          method.methodKind === "server_streaming"
            ? create(method.input, reqs as MessageInitShape<DescMessage>)
            : mapAsync(reqs as AsyncIterable<MessageInitShape<DescMessage>>, (r) => create(method.input, r));
        return (async function* () {
          caller?.admit(path);
          const output = fn(input, ctxOf(opts, false)) as AsyncIterable<MessageInitShape<DescMessage>>;
          yield* mapAsync(output, (o) => create(method.output, o));
        })();
      };
    }
  }
  return client as ServiceClient<S>;
}

// ---- grpc-js definitions -----------------------------------------------------------------------

/**
 * A request a server could not decode (a string field that is not UTF-8, a truncated field). grpc-js
 * would answer a deserializer that throws with a bare INTERNAL before the guard ran; the server's
 * deserializer hands this on instead, and the call fails once the guard admitted it, with
 * INVALID_ARGUMENT / MALFORMED_REQUEST and its ErrorInfo like any other refusal.
 */
class Undecodable {
  constructor(
    readonly method: DescMethod,
    readonly cause: unknown,
  ) {}

  error(): SwitchboardError {
    const why = this.cause instanceof Error ? `: ${this.cause.message}` : "";
    return errors.invalid(
      "MALFORMED_REQUEST",
      `the request is not a valid ${this.method.input.typeName}${why.slice(0, 200)}`,
    );
  }
}

/** The request, or the refusal of one that could not be decoded. */
function decoded<T>(request: T): T {
  if (request instanceof Undecodable) throw request.error();
  return request;
}

/** The requests of a stream, failing at the first that could not be decoded. */
async function* decodedAll<T>(requests: AsyncIterable<T>): AsyncIterable<T> {
  for await (const r of requests) yield decoded(r);
}

/** The grpc-js definition of a service; a server's counts every message it decodes and encodes. */
function definitionOf(service: DescService, meters?: Map<DescMethod, MethodMeter>): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    if (!isSupported(method)) continue;
    const meter = meters?.get(method);
    def[method.localName] = {
      path: pathOf(method),
      requestStream: method.methodKind === "bidi_streaming",
      responseStream: method.methodKind !== "unary",
      requestSerialize: (m) => Buffer.from(toBinary(method.input, m as MessageShape<DescMessage>)),
      // Never throws (see Undecodable): only servers decode requests.
      requestDeserialize: (b: Buffer) => {
        meter?.received();
        try {
          return fromBinary(method.input, b);
        } catch (err) {
          return new Undecodable(method, err);
        }
      },
      responseSerialize: (m) => {
        meter?.sent();
        return Buffer.from(toBinary(method.output, m as MessageShape<DescMessage>));
      },
      responseDeserialize: (b: Buffer) => fromBinary(method.output, b),
      originalName: method.name,
    };
  }
  return def as grpc.ServiceDefinition;
}

/** A failed call's status: the code, the message, and the reason as google.rpc.ErrorInfo. */
function toStatus(e: SwitchboardError): Partial<grpc.StatusObject> {
  const metadata = new grpc.Metadata();
  metadata.set(STATUS_DETAILS_KEY, encodeStatusDetails(e));
  metadata.set(LEGACY_REASON_KEY, e.reason);
  return { code: e.code as number as grpc.status, details: e.publicMessage, metadata };
}

/** Codes of statuses grpc-js makes itself that a caller may retry: a second, as UNAVAILABLE's. */
const TRANSIENT_CODES = new Set<number>([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]);

/**
 * The SwitchboardError a failed call's status stands for: reason, retry delay and metadata from its
 * ErrorInfo and RetryInfo; without them (statuses grpc-js makes itself: the caller's own deadline,
 * an unreachable peer) the code's name is the reason, as docs/protocol.md §6 says, the message a
 * client is told names the call and not the peer (grpc-js's own text, with internal addresses, stays
 * in `message` for this process's logs and callers), and an UNAVAILABLE or DEADLINE_EXCEEDED is worth
 * a retry after a second.
 */
function fromStatus(err: grpc.ServiceError, call: string): SwitchboardError {
  const e = statusError(err, call);
  answeredByPeer.add(e);
  return e;
}

/** Errors a peer answered this process's calls with (fromStatus), not refusals of this call's caller. */
const answeredByPeer = new WeakSet<SwitchboardError>();

/**
 * What this server tells its caller of `e`: a peer's refusal of this process's own credential, met
 * while serving the call, is UNAVAILABLE (forClients): the deployment's fault, for nothing the caller
 * did, and the peer's reason would read as the caller's own credential refused. The caller's own
 * refusals (this server's guard, a stream's credential checked again) go out as they are.
 */
function toCaller(e: SwitchboardError): SwitchboardError {
  return answeredByPeer.has(e) ? forClients(e) : e;
}

function statusError(err: grpc.ServiceError, call: string): SwitchboardError {
  const bytes = err.metadata?.get(STATUS_DETAILS_KEY)[0];
  const details = bytes instanceof Uint8Array ? decodeStatusDetails(bytes) : undefined;
  const legacy = err.metadata?.get(LEGACY_REASON_KEY)[0];
  const reason = details?.reason || (typeof legacy === "string" ? legacy : undefined);
  if (reason !== undefined)
    return new SwitchboardError(err.code as number as Code, reason, err.details || err.message, {
      cause: err,
      ...(details ? { retryAfterMs: details.retryAfterMs, metadata: details.metadata } : {}),
    });
  const name = Code[err.code as number] || "UNKNOWN";
  const publicMessage = `internal call ${call} failed: ${name}`;
  return new SwitchboardError(
    err.code as number as Code,
    name,
    `${publicMessage}: ${err.details || err.message}`,
    {
      cause: err,
      retryAfterMs: TRANSIENT_CODES.has(err.code) ? 1_000 : 0,
      publicMessage,
    },
  );
}

// ---- servers -----------------------------------------------------------------------------------

interface ServerState {
  readonly services: DescService[];
  /** Services answered "starting" until addService adds them (see addStartingService). */
  readonly starting: Set<string>;
  metrics: GrpcMetrics | undefined;
  guard: CallGuard | undefined;
}

/**
 * Decides whether a call may run (ADR 0007, internal/grpc-auth): resolves to the caller's principal
 * or rejects with the refusal (UNAUTHENTICATED, PERMISSION_DENIED), before the handler runs. It is
 * given the call's `authorization` metadata and, on a TLS port, the client's certificate (DER).
 */
export type CallGuard = (
  path: string,
  authorization: string | undefined,
  peerCertificate: Buffer | undefined,
) => Promise<string | undefined>;

/** grpc-js has no per-server hook for these, so the adapter keeps them beside each server. */
const servers = new WeakMap<grpc.Server, ServerState>();

function stateOf(server: grpc.Server): ServerState {
  let state = servers.get(server);
  if (!state) {
    state = { services: [], starting: new Set(), metrics: undefined, guard: undefined };
    servers.set(server, state);
  }
  return state;
}

/** Counts the calls of every service added to `server` from now on (grpc_server_* metrics). */
export function instrumentServer(server: grpc.Server, metrics: GrpcMetrics): void {
  stateOf(server).metrics = metrics;
}

/** Runs every call of every service added to `server` from now on past `guard` first. */
export function guardServer(server: grpc.Server, guard: CallGuard): void {
  stateOf(server).guard = guard;
}

/**
 * Answers every method of `service` UNAVAILABLE until addService adds the service. A process binds
 * its port before its role has started (a gateway advertises the port it got), and a call arriving
 * meanwhile should be retried, on another replica by the clients' retry policy (SPREAD_SERVICE_CONFIG)
 * or later by its caller, not answered UNIMPLEMENTED, which no caller retries.
 */
export function addStartingService(server: grpc.Server, service: DescService): void {
  const status = toStatus(
    errors.unavailable("UNAVAILABLE", `${service.typeName} is starting: not serving yet`),
  );
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const method of service.methods) {
    if (!isSupported(method)) continue;
    handlers[method.localName] =
      method.methodKind === "unary"
        ? (_call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => cb(status, null)
        : (call: grpc.ServerWritableStream<unknown, unknown>) => call.emit("error", status);
  }
  server.addService(definitionOf(service), handlers);
  stateOf(server).starting.add(service.typeName);
}

/** Services added with addStartingService that addService has not added since. */
export function startingServicesOf(server: grpc.Server): readonly string[] {
  return [...stateOf(server).starting];
}

/** The services added to `server` so far, in order (what reflection lists and health knows). */
export function servicesOf(server: grpc.Server): readonly DescService[] {
  return stateOf(server).services;
}

type ServerCall =
  | grpc.ServerUnaryCall<unknown, unknown>
  | grpc.ServerWritableStream<unknown, unknown>
  | grpc.ServerDuplexStream<unknown, unknown>;

function deadlineOf(call: ServerCall): number | undefined {
  const d = call.getDeadline();
  const ms = d instanceof Date ? d.getTime() : d;
  return Number.isFinite(ms) ? ms : undefined;
}

/**
 * The context of one incoming call, and `end`, which records its status code once: at the handler's
 * answer, or earlier when the caller cancels or the deadline passes (grpc-js has then already sent
 * DEADLINE_EXCEEDED or seen the stream reset, and drops whatever the handler answers later).
 */
function beginCall(call: ServerCall, meter: MethodMeter | undefined) {
  let principal: string | undefined;
  const ctl = new AbortController();
  const deadline = deadlineOf(call);
  const record = meter?.start();
  let timer: NodeJS.Timeout | undefined;
  let ended = false;
  const end = (code: number) => {
    if (ended) return;
    ended = true;
    clearTimeout(timer);
    record?.(code);
  };
  const abort = (reason: SwitchboardError) => {
    ctl.abort(reason);
    end(reason.code);
  };
  if (deadline !== undefined) {
    timer = setTimeout(() => abort(deadlineExceeded()), Math.max(0, deadline - Date.now()));
    timer.unref();
  }
  (call as EventEmitter).on("cancelled", () =>
    abort(
      deadline !== undefined && Date.now() >= deadline - DEADLINE_SLACK_MS ? deadlineExceeded() : cancelled(),
    ),
  );
  let check: (() => Promise<string | undefined>) | undefined;
  const ctx: CallContext = {
    signal: ctl.signal,
    peer: call.getPeer(),
    deadline,
    get principal() {
      return principal;
    },
    get reauthenticate() {
      if (!check) return undefined;
      const again = check;
      return async () => {
        if ((await again()) !== principal)
          throw errors.unauthenticated(
            "CREDENTIALS_CHANGED",
            "the call's credential names another caller now",
          );
      };
    },
  };
  /** Settles the call's guard (if its server has one) before the handler runs; rejects with the refusal. */
  const admit = async (guard: CallGuard | undefined, path: string) => {
    if (!guard) return;
    const authorization = call.metadata.get("authorization")[0];
    const certificate = call.getAuthContext().sslPeerCertificate?.raw;
    check = () => guard(path, typeof authorization === "string" ? authorization : undefined, certificate);
    principal = await check();
  };
  return { ctx, end, admit };
}

/** Resolves when `stream` can take more, or at once when the call is over. */
function writable(stream: EventEmitter, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      stream.off("drain", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    stream.on("drain", done);
    signal.addEventListener("abort", done);
  });
}

/** Writes a handler's output to a response stream, with backpressure, until it ends or the call does. */
async function pump(
  call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>,
  method: DescMethod,
  output: AsyncIterable<MessageInitShape<DescMessage>>,
  signal: AbortSignal,
): Promise<void> {
  // Leaving the loop early (the caller is gone) returns the handler's generator, which ends it.
  for await (const out of output) {
    if (signal.aborted) return;
    if (!call.write(create(method.output, out))) await writable(call, signal);
  }
}

/** OpenTelemetry RPC attributes of a call's span. */
function rpcAttributes(service: DescService, method: DescMethod): Record<string, string | number> {
  return { "rpc.system": "grpc", "rpc.service": service.typeName, "rpc.method": method.name };
}

/**
 * `server.address` and `server.port` of a client's calls, from its target as grpcClient takes it
 * (`host:port`, `[v6]:port`, `dns:///name:port`, `dns:name:port`, `ipv4:host:port`): the name the
 * caller asked for. A target of several addresses (`ipv4:a:1,b:2`) or a socket path names no one
 * server, and gets neither.
 */
export function targetAttributes(target: string): Record<string, string | number> {
  const named = /^(?:dns:(?:\/\/[^/]*\/)?|ipv4:|ipv6:)?(.+)$/.exec(target)![1]!;
  if (named.includes(",") || target.startsWith("unix:")) return {};
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(named);
  if (!match) return named === "" || named.includes(":") ? {} : { "server.address": named };
  return { "server.address": match[1] ?? match[2]!, "server.port": Number(match[3]) };
}

/**
 * `network.peer.address` and `network.peer.port` of a server call, from grpc-js's peer name: the
 * socket's remote address and port joined by a colon (`10.0.0.7:51234`, `::1:51234`), or
 * `unknown`.
 */
export function peerAttributes(peer: string): Record<string, string | number> {
  const match = /^(.+):(\d{1,5})$/.exec(peer);
  if (!match) return {};
  return { "network.peer.address": match[1]!, "network.peer.port": Number(match[2]) };
}

/**
 * Registers a protobuf-es service implementation on a grpc-js server. With `startsTraces` (the server
 * API, where messages enter the platform like a WebSocket send), a unary call without a
 * `traceparent` starts a trace of its own, sampled at tracing.sampleRatio; calls of the internal
 * services join their caller's trace only.
 */
export function addService<S extends DescService>(
  server: grpc.Server,
  service: S,
  impl: ServiceImpl<S>,
  options: { startsTraces?: boolean } = {},
): void {
  const state = stateOf(server);
  const meters = new Map<DescMethod, MethodMeter>();
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const method of service.methods) {
    if (!isSupported(method)) continue;
    const fn = methodOf(impl, method);
    const path = pathOf(method);
    const meter = state.metrics && methodMeter(state.metrics, "server", method);
    if (meter) meters.set(method, meter);
    const fail = (end: (code: number) => void, err: unknown) => {
      const e = toCaller(SwitchboardError.from(err));
      end(e.code);
      return toStatus(e);
    };
    if (method.methodKind === "unary") {
      handlers[method.localName] = ((
        call: grpc.ServerUnaryCall<unknown, unknown>,
        cb: grpc.sendUnaryData<unknown>,
      ) => {
        const { ctx, end, admit } = beginCall(call, meter);
        const run = () => fn(decoded(call.request), ctx) as Promise<MessageInitShape<DescMessage>>;
        // A call made in a trace (its traceparent in the metadata) is a server span of that trace.
        const traceparent = tracing.on ? call.metadata.get("traceparent")[0] : undefined;
        const traced = typeof traceparent === "string" || (tracing.on && options.startsTraces === true);
        admit(state.guard, path)
          .then(() =>
            traced
              ? inSpan(
                  `${service.typeName}/${method.name}`,
                  {
                    kind: SpanKind.SERVER,
                    parent: typeof traceparent === "string" ? { traceparent } : ROOT_CONTEXT,
                    attributes: { ...rpcAttributes(service, method), ...peerAttributes(call.getPeer()) },
                  },
                  run,
                )
              : run(),
          )
          .then((res) => create(method.output, res))
          .then(
            (out) => {
              end(grpc.status.OK);
              cb(null, out);
            },
            (err: unknown) => cb(fail(end, err)),
          );
      }) as grpc.handleUnaryCall<unknown, unknown>;
    } else {
      const streamed = ((
        call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>,
      ) => {
        const { ctx, end, admit } = beginCall(call, meter);
        // Not the stream's default iterator: that destroys the call when the requests end, and a
        // destroyed call never sends its status (the handler may still answer after the last request).
        const requests =
          method.methodKind === "server_streaming"
            ? (call as grpc.ServerWritableStream<unknown, unknown>).request
            : (call as grpc.ServerDuplexStream<unknown, unknown>).iterator({ destroyOnReturn: false });
        // Checked once admitted: a caller the guard refuses learns nothing of how its request decoded.
        const input = () =>
          method.methodKind === "server_streaming"
            ? decoded(requests)
            : decodedAll(requests as AsyncIterable<unknown>);
        admit(state.guard, path)
          .then(() =>
            pump(call, method, fn(input(), ctx) as AsyncIterable<MessageInitShape<DescMessage>>, ctx.signal),
          )
          .then(
            () => {
              // A client that cancels its stream also ends its requests, and a handler that returns
              // when they end returns before grpc-js reports the cancel: the status waits for a turn
              // of the loop, in which a cancel is counted as one ('cancelled', in beginCall).
              setImmediate(() => {
                if (call.cancelled) return;
                end(grpc.status.OK);
                call.end();
              });
            },
            (err: unknown) => call.emit("error", fail(end, err)),
          );
      }) as grpc.handleServerStreamingCall<unknown, unknown>;
      handlers[method.localName] = streamed;
    }
  }
  if (state.starting.delete(service.typeName)) server.removeService(definitionOf(service));
  server.addService(definitionOf(service, meters), handlers);
  state.services.push(service);
}

// ---- clients -----------------------------------------------------------------------------------

/**
 * Service config of clients to a role with several replicas: round robin over every address the
 * target resolves to (a headless Service's Pod IPs, or an `ipv4:a,b` list), so calls spread over
 * all replicas instead of sticking to one HTTP/2 connection, and unary calls that fail with
 * UNAVAILABLE (the replica went away) are retried on another replica before the caller sees it.
 */
const SPREAD_SERVICE_CONFIG = JSON.stringify({
  loadBalancingConfig: [{ round_robin: {} }],
  methodConfig: [
    {
      name: [{}],
      retryPolicy: {
        maxAttempts: 4,
        initialBackoff: "0.05s",
        maxBackoff: "1s",
        backoffMultiplier: 2,
        retryableStatusCodes: ["UNAVAILABLE"],
      },
    },
  ],
});

export interface GrpcClientOptions {
  credentials?: grpc.ChannelCredentials;
  /** Spread calls over every address of the target and retry UNAVAILABLE elsewhere (see above). */
  spread?: boolean;
  /** Count this client's calls (grpc_client_* metrics). */
  metrics?: GrpcMetrics;
  /** This process's credential, sent as `authorization: Bearer …` with every call (ADR 0007). */
  bearer?: () => string | undefined;
  /**
   * The TLS server name to send and hand to the credentials' identity check instead of the target's
   * host (a Pod IP is no name; mTLS clients check the server's `switchboard://` identity instead).
   */
  serverName?: string;
  /**
   * HTTP/2 PING after this much time and close the connection when a ping goes unanswered for
   * `timeoutMs` (grpc.keepaliveMs). Default: 30 s and 20 s.
   */
  keepalive?: Keepalive;
}

/** The keepalive of a gRPC connection (grpc.keepaliveMs, grpc.keepaliveTimeoutMs). */
export interface Keepalive {
  timeMs: number;
  timeoutMs: number;
}

/** Reads a response stream; an abandoned one (the caller stopped iterating) is cancelled. */
async function* responses(
  stream: grpc.ClientReadableStream<unknown> | grpc.ClientDuplexStream<unknown, unknown>,
  call: string,
): AsyncIterable<MessageShape<DescMessage>> {
  let over = false;
  try {
    for await (const m of stream as AsyncIterable<MessageShape<DescMessage>>) yield m;
    over = true;
  } catch (err) {
    over = true;
    throw fromStatus(err as grpc.ServiceError, call);
  } finally {
    if (!over) stream.cancel();
  }
}

/** How soon a client tries a peer again after its connection failed (grpc-js: 1 s, up to 120 s). */
const RECONNECT_BACKOFF_MS = { initial: 250, max: 2_000 } as const;

/**
 * A client for a service behind gRPC at `target`: `host:port`, `dns:///name:port` or
 * `ipv4:host:port,host:port`; plaintext unless credentials are given.
 */
export function grpcClient<S extends DescService>(
  service: S,
  target: string,
  options: GrpcClientOptions = {},
): ServiceClient<S> & { close(): void } {
  const Ctor = grpc.makeGenericClientConstructor(definitionOf(service), service.name);
  const raw = new Ctor(target, options.credentials ?? grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 4 * 1024 * 1024,
    "grpc.keepalive_time_ms": options.keepalive?.timeMs ?? 30_000,
    "grpc.keepalive_timeout_ms": options.keepalive?.timeoutMs ?? 20_000,
    // Idle channels too: the first call on a channel the network dropped while it was idle would
    // otherwise wait for its deadline (grpc-js pings only while calls are active).
    "grpc.keepalive_permit_without_calls": 1,
    // A peer that comes back (a restarted process) is reached within about two seconds: with grpc-js's
    // own backoff (1 s growing 1.6 times up to 120 s) a gateway's first ack came 6.7 s after an id
    // process down for 40 s was ready again (1.3 s with these; test/infra/cluster, one run each).
    // Peers are few; an attempt every 2 s costs nothing.
    "grpc.initial_reconnect_backoff_ms": RECONNECT_BACKOFF_MS.initial,
    "grpc.max_reconnect_backoff_ms": RECONNECT_BACKOFF_MS.max,
    ...(options.serverName ? { "grpc.ssl_target_name_override": options.serverName } : {}),
    ...(options.spread
      ? { "grpc.service_config": SPREAD_SERVICE_CONFIG, "grpc.dns_min_time_between_resolutions_ms": 5_000 }
      : {}),
  }) as unknown as Record<string, AnyFn> & grpc.Client;
  const client: Record<string, unknown> = { close: () => raw.close() };
  const server = targetAttributes(target);
  /** A call's metadata: this process's credential, if it has one. */
  const metadataOf = () => {
    const metadata = new grpc.Metadata();
    const bearer = options.bearer?.();
    if (bearer !== undefined) metadata.set("authorization", `Bearer ${bearer}`);
    return metadata;
  };
  for (const method of service.methods) {
    if (!isSupported(method)) continue;
    const call = raw[method.localName]!.bind(raw);
    const callName = `${service.typeName}/${method.name}`;
    const meter = options.metrics && methodMeter(options.metrics, "client", method);
    if (method.methodKind === "unary") {
      const unary = (
        req: MessageInitShape<DescMessage>,
        opts: CallOptions | undefined,
        metadata: grpc.Metadata,
      ) =>
        new Promise((resolve, reject) => {
          // Never past the deadline of the call this one is made for: its caller has given up by then.
          const deadline = Math.min(
            Date.now() + (opts?.timeoutMs ?? DEFAULT_UNARY_TIMEOUT_MS),
            opts?.deadline ?? Number.POSITIVE_INFINITY,
          );
          const record = meter?.start();
          const c = call(create(method.input, req), metadata, { deadline }, (err: unknown, res: unknown) => {
            record?.(err ? ((err as grpc.ServiceError).code ?? grpc.status.UNKNOWN) : grpc.status.OK);
            if (err) reject(fromStatus(err as grpc.ServiceError, callName));
            else resolve(res);
          }) as grpc.ClientUnaryCall;
          opts?.signal?.addEventListener("abort", () => c.cancel(), { once: true });
        });
      client[method.localName] = (req: MessageInitShape<DescMessage>, opts?: CallOptions) => {
        // Within a trace, the call is a client span whose context travels in the metadata.
        if (!tracing.on || !trace.getSpan(context.active())) return unary(req, opts, metadataOf());
        return inSpan(
          `${service.typeName}/${method.name}`,
          { kind: SpanKind.CLIENT, attributes: { ...rpcAttributes(service, method), ...server } },
          () => {
            const metadata = metadataOf();
            for (const [k, v] of Object.entries(activeCarrier() ?? {})) metadata.set(k, v);
            return unary(req, opts, metadata);
          },
        );
      };
    } else {
      // Streams are long-lived (Deliver, Watch): only an explicit timeoutMs bounds them.
      client[method.localName] = (reqs: unknown, opts?: CallOptions) => {
        const callOptions: grpc.CallOptions = opts?.timeoutMs
          ? { deadline: Date.now() + opts.timeoutMs }
          : {};
        const record = meter?.start();
        let stream: grpc.ClientReadableStream<unknown> | grpc.ClientDuplexStream<unknown, unknown>;
        if (method.methodKind === "server_streaming") {
          stream = call(
            create(method.input, reqs as MessageInitShape<DescMessage>),
            metadataOf(),
            callOptions,
          ) as grpc.ClientReadableStream<unknown>;
        } else {
          const duplex = call(metadataOf(), callOptions) as grpc.ClientDuplexStream<unknown, unknown>;
          stream = duplex;
          (async () => {
            for await (const r of reqs as AsyncIterable<MessageInitShape<DescMessage>>) {
              if (!duplex.write(create(method.input, r))) await once(duplex, "drain");
            }
            duplex.end();
          })().catch(() => duplex.cancel());
        }
        stream.on("status", (s: grpc.StatusObject) => record?.(s.code));
        opts?.signal?.addEventListener("abort", () => stream.cancel(), { once: true });
        return responses(stream, callName);
      };
    }
  }
  return client as ServiceClient<S> & { close(): void };
}
