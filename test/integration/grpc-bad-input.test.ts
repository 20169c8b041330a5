/**
 * Every method of every gRPC service the platform serves (a stream gets one request and is
 * half-closed), called once per string field (nested
 * ones too) with that field 5,000 characters long, or a group or direct conversation id of thousands
 * of characters, and plausible values in the others (so that the field is reached): each answers
 * with a status a caller can act on (INVALID_ARGUMENT and the like), never INTERNAL, UNKNOWN, a
 * timeout or UNAVAILABLE; nothing is logged as an error, and the process stays up. Ids become storage keys, and storage keys
 * have a size limit (LMDB's is under 2 KB): an id must be refused at the edge, not found too long by
 * the store.
 */
import { create, type DescMessage, type DescService, ScalarType, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChatService } from "../../gen/switchboard/api/v1/chat_pb.js";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import { PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { grpcClient } from "../../internal/lib/rpc.js";
import { type ServerProcess, startServer } from "../helpers/server.js";

const SERVICES: DescService[] = [
  ChatService,
  GatewayService,
  IdService,
  PresenceService,
  PushService,
  RouterService,
];
const LONG_VALUES = ["x".repeat(5_000), `g:${"1".repeat(3_000)}`, `dm:a~${"b".repeat(4_000)}`];

/** A value a caller would plausibly send in this string field (so the field under test is reached). */
function plausible(name: string, groupId: string): string {
  if (/conversation_id/.test(name)) return groupId;
  if (/^(user_id|owner|sender|to_user|user)$/.test(name)) return "ok-user";
  if (/idempotency_key|client_msg_id/.test(name)) return "k-1";
  if (name === "device_id") return "d1";
  if (name === "token") return "a".repeat(64);
  if (name === "session_id") return "s1";
  return "x";
}

interface StringField {
  path: string[];
  list: boolean;
}

/** The string fields of `desc` (and of its message fields, two levels deep), by path. */
function stringFields(desc: DescMessage, prefix: string[] = [], depth = 0): StringField[] {
  return desc.fields.flatMap((f): StringField[] => {
    if (f.fieldKind === "scalar" && f.scalar === ScalarType.STRING)
      return [{ path: [...prefix, f.localName], list: false }];
    if (f.fieldKind === "list" && f.listKind === "scalar" && f.scalar === ScalarType.STRING)
      return [{ path: [...prefix, f.localName], list: true }];
    if (f.fieldKind === "message" && depth < 2)
      return stringFields(f.message, [...prefix, f.localName], depth + 1);
    return [];
  });
}

/**
 * A request of `desc` with plausible values everywhere (the first value of each enum, the first
 * member of each oneof), except the field at `target`, which holds `long` (in a list, beside a
 * plausible element).
 */
function requestWith(
  desc: DescMessage,
  target: string[],
  long: string,
  groupId: string,
  prefix: string[] = [],
) {
  const out: Record<string, unknown> = {};
  for (const f of desc.fields) {
    const path = [...prefix, f.localName];
    const isTarget = path.join(".") === target.join(".");
    const onTarget = target.join(".").startsWith(`${path.join(".")}.`);
    if (f.oneof && out[f.oneof.localName] !== undefined && !isTarget && !onTarget) continue;
    let value: unknown;
    if (f.fieldKind === "scalar" && f.scalar === ScalarType.STRING)
      value = isTarget ? long : plausible(f.name, groupId);
    else if (f.fieldKind === "list" && f.listKind === "scalar" && f.scalar === ScalarType.STRING)
      value = isTarget ? [long, plausible(f.name.replace(/s$/, ""), groupId)] : ["ok-user"];
    else if (f.fieldKind === "enum") value = f.enum.values[1]?.number ?? 0;
    else if (f.fieldKind === "message" && prefix.length < 2)
      value = requestWith(f.message, target, long, groupId, path);
    else continue;
    if (f.oneof) out[f.oneof.localName] = { case: f.localName, value };
    else out[f.localName] = value;
  }
  return out;
}

/** What a caller can act on. INTERNAL, UNKNOWN, a timeout or UNAVAILABLE for bad input is a bug. */
const CLIENT_ERRORS = new Set([
  grpc.status.OK,
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.PERMISSION_DENIED,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.ALREADY_EXISTS,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.OUT_OF_RANGE,
]);

let server: ServerProcess;
let client: grpc.Client;
/** A real group, so that a plausible conversation id gets past the "no such group" answers. */
let groupId: string;

beforeAll(async () => {
  server = await startServer({ args: ["--grpc-port", "0", "--dev"] });
  client = new grpc.Client(`127.0.0.1:${server.grpcPort}`, grpc.credentials.createInsecure());
  const router = grpcClient(RouterService, `127.0.0.1:${server.grpcPort}`);
  const { conversation } = await router.createGroup({ owner: "ok-user", name: "bad input", members: [] });
  groupId = conversation!.id;
  router.close();
});

afterAll(async () => {
  client?.close();
  await server?.dispose();
});

const call = (path: string, bytes: Buffer) =>
  new Promise<grpc.status>((resolve) => {
    client.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      bytes,
      { deadline: Date.now() + 10_000 },
      (err) => resolve(err ? err.code : grpc.status.OK),
    );
  });

/** Opens a bidi stream, writes one request, half-closes, and resolves with how the stream ended. */
const stream = (path: string, bytes: Buffer) =>
  new Promise<grpc.status>((resolve) => {
    const call = client.makeBidiStreamRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      new grpc.Metadata(),
      { deadline: Date.now() + 3_000 },
    );
    call.on("data", () => undefined);
    call.on("error", (err: grpc.ServiceError) => resolve(err.code));
    call.on("end", () => resolve(grpc.status.OK));
    call.write(bytes);
    call.end();
  });

describe("gRPC methods given oversized ids", () => {
  it("refuse each field too long with a status a caller can act on, log no error, and the process stays up", async () => {
    const wrong: string[] = [];
    let calls = 0;
    for (const long of LONG_VALUES) {
      for (const service of SERVICES) {
        for (const method of service.methods) {
          const path = `/${service.typeName}/${method.name}`;
          // A stream that is fine stays open for events until the deadline: that is no failure.
          const acceptable =
            method.methodKind === "bidi_streaming"
              ? new Set([...CLIENT_ERRORS, grpc.status.DEADLINE_EXCEEDED, grpc.status.CANCELLED])
              : CLIENT_ERRORS;
          for (const field of stringFields(method.input)) {
            const request = create(
              method.input,
              requestWith(method.input, field.path, long, groupId) as never,
            );
            const bytes = Buffer.from(toBinary(method.input, request));
            const status =
              method.methodKind === "unary" ? await call(path, bytes) : await stream(path, bytes);
            calls++;
            if (!acceptable.has(status))
              wrong.push(
                `${path} with ${field.path.join(".")} = ${long.slice(0, 6)}…: ${grpc.status[status]}`,
              );
          }
        }
      }
    }
    expect(calls).toBeGreaterThan(200);
    expect(wrong).toEqual([]);
    // Presence writes last-active times a second later, in a batch: give it time to fail, if it would.
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect(server.child.exitCode).toBeNull();
    expect((await fetch(`${server.httpUrl}/readyz`)).status).toBe(200);
    const errorLines = server
      .stderr()
      .split("\n")
      // kafkajs logs its own retries at error level (a partition's leader not known yet, right
      // after the test's topics were made); those are the client library's, not a request's.
      .filter((line) => line.includes('"level":"error"') && !line.includes('"logger":"kafkajs"'));
    expect(errorLines.map((line) => line.slice(0, 400))).toEqual([]);
  }, 180_000);
});
