/**
 * One small generic adapter between protobuf-es service descriptors and @grpc/grpc-js, so no
 * service has hand-written per-method boilerplate. The same `ServiceClient<S>` type is produced
 * by `grpcClient` (across processes) and `inProcessClient` (all-in-one mode), which is how the
 * single-process platform is wired through the very interfaces the cluster uses.
 */
import { once } from "node:events";
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
import { Code, SwitchboardError } from "./errors.js";
import { activeCarrier, context, inSpan, SpanKind, trace, tracing } from "./tracing.js";

/** Per-call context handed to service implementations. */
export interface CallContext {
  /** Aborted when the caller cancels or the deadline passes. */
  readonly signal: AbortSignal;
  /** Remote address for gRPC calls, "in-process" otherwise. */
  readonly peer: string;
}

/** Per-call options for clients. */
export interface CallOptions {
  /** Milliseconds until the call fails with DEADLINE_EXCEEDED (default 10 s for unary calls). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

type Unary<I extends DescMessage, O extends DescMessage> = { methodKind: "unary"; input: I; output: O };
type Bidi<I extends DescMessage, O extends DescMessage> = {
  methodKind: "bidi_streaming";
  input: I;
  output: O;
};

/** What a service implementation provides, method by method. */
export type ServiceImpl<S extends DescService> = {
  [K in keyof S["method"]]: S["method"][K] extends Unary<infer I, infer O>
    ? (request: MessageShape<I>, ctx: CallContext) => Promise<MessageInitShape<O>>
    : S["method"][K] extends Bidi<infer I, infer O>
      ? (requests: AsyncIterable<MessageShape<I>>, ctx: CallContext) => AsyncIterable<MessageInitShape<O>>
      : never;
};

/** What callers of a service see, whether it runs in this process or behind gRPC. */
export type ServiceClient<S extends DescService> = {
  [K in keyof S["method"]]: S["method"][K] extends Unary<infer I, infer O>
    ? (request: MessageInitShape<I>, options?: CallOptions) => Promise<MessageShape<O>>
    : S["method"][K] extends Bidi<infer I, infer O>
      ? (
          requests: AsyncIterable<MessageInitShape<I>>,
          options?: CallOptions,
        ) => AsyncIterable<MessageShape<O>>
      : never;
};

const DEFAULT_UNARY_TIMEOUT_MS = 10_000;
const REASON_METADATA_KEY = "switchboard-reason";

function isSupported(method: DescMethod): boolean {
  return method.methodKind === "unary" || method.methodKind === "bidi_streaming";
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

/** Calls an implementation directly, with the same message normalisation gRPC would apply. */
export function inProcessClient<S extends DescService>(service: S, impl: ServiceImpl<S>): ServiceClient<S> {
  const client: Record<string, unknown> = {};
  for (const method of service.methods) {
    if (!isSupported(method)) continue;
    const fn = methodOf(impl, method);
    if (method.methodKind === "unary") {
      client[method.localName] = async (req: MessageInitShape<DescMessage>, opts?: CallOptions) => {
        const signal = opts?.signal ?? new AbortController().signal;
        const res = await (fn(create(method.input, req), { signal, peer: "in-process" }) as Promise<object>);
        return create(method.output, res as MessageInitShape<DescMessage>);
      };
    } else {
      client[method.localName] = (reqs: AsyncIterable<MessageInitShape<DescMessage>>, opts?: CallOptions) => {
        const signal = opts?.signal ?? new AbortController().signal;
        const input = mapAsync(reqs, (r) => create(method.input, r));
        const output = fn(input, { signal, peer: "in-process" }) as AsyncIterable<
          MessageInitShape<DescMessage>
        >;
        return mapAsync(output, (o) => create(method.output, o));
      };
    }
  }
  return client as ServiceClient<S>;
}

function definitionOf(service: DescService): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    if (!isSupported(method)) continue;
    const bidi = method.methodKind === "bidi_streaming";
    def[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: bidi,
      responseStream: bidi,
      requestSerialize: (m) => Buffer.from(toBinary(method.input, m as MessageShape<DescMessage>)),
      requestDeserialize: (b: Buffer) => fromBinary(method.input, b),
      responseSerialize: (m) => Buffer.from(toBinary(method.output, m as MessageShape<DescMessage>)),
      responseDeserialize: (b: Buffer) => fromBinary(method.output, b),
      originalName: method.name,
    };
  }
  return def as grpc.ServiceDefinition;
}

function toStatus(err: unknown): Partial<grpc.StatusObject> {
  const e = SwitchboardError.from(err);
  const metadata = new grpc.Metadata();
  metadata.set(REASON_METADATA_KEY, e.reason);
  return { code: e.code as number as grpc.status, details: e.message, metadata };
}

function fromStatus(err: grpc.ServiceError): SwitchboardError {
  const reason = err.metadata?.get(REASON_METADATA_KEY)[0];
  return new SwitchboardError(
    err.code as number as Code,
    typeof reason === "string" ? reason : (Code[err.code as number] ?? "UNKNOWN"),
    err.details || err.message,
    { cause: err },
  );
}

function contextOf(call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>) {
  const ctl = new AbortController();
  call.on("cancelled", () => ctl.abort(new SwitchboardError(Code.CANCELLED, "CANCELLED", "call cancelled")));
  return { signal: ctl.signal, peer: call.getPeer() };
}

/** OpenTelemetry RPC attributes of a call's span. */
function rpcAttributes(service: DescService, method: DescMethod) {
  return { "rpc.system": "grpc", "rpc.service": service.typeName, "rpc.method": method.name };
}

/** Registers a protobuf-es service implementation on a grpc-js server. */
export function addService<S extends DescService>(
  server: grpc.Server,
  service: S,
  impl: ServiceImpl<S>,
): void {
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const method of service.methods) {
    if (!isSupported(method)) continue;
    const fn = methodOf(impl, method);
    if (method.methodKind === "unary") {
      handlers[method.localName] = ((
        call: grpc.ServerUnaryCall<unknown, unknown>,
        cb: grpc.sendUnaryData<unknown>,
      ) => {
        const run = () => fn(call.request, contextOf(call)) as Promise<MessageInitShape<DescMessage>>;
        // A call made in a trace (its traceparent in the metadata) is a server span of that trace.
        const traceparent = tracing.on ? call.metadata.get("traceparent")[0] : undefined;
        Promise.resolve()
          .then(() =>
            typeof traceparent === "string"
              ? inSpan(
                  `${service.typeName}/${method.name}`,
                  {
                    kind: SpanKind.SERVER,
                    parent: { traceparent },
                    attributes: rpcAttributes(service, method),
                  },
                  run,
                )
              : run(),
          )
          .then(
            (res) => cb(null, create(method.output, res)),
            (err: unknown) => cb(toStatus(err)),
          );
      }) as grpc.handleUnaryCall<unknown, unknown>;
    } else {
      handlers[method.localName] = ((call: grpc.ServerDuplexStream<unknown, unknown>) => {
        const input = call as unknown as AsyncIterable<MessageShape<DescMessage>>;
        const output = fn(input, contextOf(call)) as AsyncIterable<MessageInitShape<DescMessage>>;
        (async () => {
          for await (const out of output) {
            if (!call.write(create(method.output, out))) await once(call, "drain");
          }
          call.end();
        })().catch((err: unknown) => call.emit("error", toStatus(err)));
      }) as grpc.handleBidiStreamingCall<unknown, unknown>;
    }
  }
  server.addService(definitionOf(service), handlers);
}

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
}

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
    "grpc.keepalive_time_ms": 30_000,
    ...(options.spread
      ? { "grpc.service_config": SPREAD_SERVICE_CONFIG, "grpc.dns_min_time_between_resolutions_ms": 5_000 }
      : {}),
  }) as unknown as Record<string, AnyFn> & grpc.Client;
  const client: Record<string, unknown> = { close: () => raw.close() };
  for (const method of service.methods) {
    if (!isSupported(method)) continue;
    const call = raw[method.localName]!.bind(raw);
    if (method.methodKind === "unary") {
      const unary = (
        req: MessageInitShape<DescMessage>,
        opts: CallOptions | undefined,
        metadata: grpc.Metadata,
      ) =>
        new Promise((resolve, reject) => {
          const deadline = Date.now() + (opts?.timeoutMs ?? DEFAULT_UNARY_TIMEOUT_MS);
          const c = call(create(method.input, req), metadata, { deadline }, (err: unknown, res: unknown) =>
            err ? reject(fromStatus(err as grpc.ServiceError)) : resolve(res),
          ) as grpc.ClientUnaryCall;
          opts?.signal?.addEventListener("abort", () => c.cancel(), { once: true });
        });
      client[method.localName] = (req: MessageInitShape<DescMessage>, opts?: CallOptions) => {
        // Within a trace, the call is a client span whose context travels in the metadata.
        if (!tracing.on || !trace.getSpan(context.active())) return unary(req, opts, new grpc.Metadata());
        return inSpan(
          `${service.typeName}/${method.name}`,
          { kind: SpanKind.CLIENT, attributes: rpcAttributes(service, method) },
          () => {
            const metadata = new grpc.Metadata();
            for (const [k, v] of Object.entries(activeCarrier() ?? {})) metadata.set(k, v);
            return unary(req, opts, metadata);
          },
        );
      };
    } else {
      client[method.localName] = (reqs: AsyncIterable<MessageInitShape<DescMessage>>, opts?: CallOptions) => {
        const options: grpc.CallOptions = opts?.timeoutMs ? { deadline: Date.now() + opts.timeoutMs } : {};
        const stream = call(new grpc.Metadata(), options) as grpc.ClientDuplexStream<unknown, unknown>;
        opts?.signal?.addEventListener("abort", () => stream.cancel(), { once: true });
        (async () => {
          for await (const r of reqs) {
            if (!stream.write(create(method.input, r))) await once(stream, "drain");
          }
          stream.end();
        })().catch(() => stream.cancel());
        return (async function* () {
          try {
            for await (const m of stream as AsyncIterable<MessageShape<DescMessage>>) yield m;
          } catch (err) {
            throw fromStatus(err as grpc.ServiceError);
          }
        })();
      };
    }
  }
  return client as ServiceClient<S> & { close(): void };
}
