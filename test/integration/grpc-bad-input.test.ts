/**
 * Every unary method of every gRPC service the platform serves, called with each of its string
 * fields (nested ones too) 5,000 characters long, or a group or direct conversation id of thousands
 * of characters: each answers with a status a caller can act on (INVALID_ARGUMENT and the like),
 * never INTERNAL, logs no error, and the process stays up. Ids become storage keys, and storage keys
 * have a size limit (LMDB's is under 2 KB): an id must be refused at the edge, not found too long by
 * the store.
 */
import { create, type DescMessage, type DescService, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChatService } from "../../gen/switchboard/api/v1/chat_pb.js";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import { PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
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

/** A request of `desc` whose every string (and list of strings) holds `long`, two levels deep. */
function withLongStrings(desc: DescMessage, long: string, depth = 0): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of desc.fields) {
    if (f.oneof && out[f.oneof.localName] !== undefined) continue;
    let value: unknown;
    if (f.fieldKind === "scalar" && f.scalar === 9 /* string */) value = long;
    else if (f.fieldKind === "list" && f.listKind === "scalar" && f.scalar === 9) value = [long, "ok-user"];
    else if (f.fieldKind === "message" && depth < 2) value = withLongStrings(f.message, long, depth + 1);
    else continue;
    if (f.oneof) out[f.oneof.localName] = { case: f.localName, value };
    else out[f.localName] = value;
  }
  return out;
}

let server: ServerProcess;
let client: grpc.Client;

beforeAll(async () => {
  server = await startServer({ args: ["--grpc-port", "0", "--dev"] });
  client = new grpc.Client(`127.0.0.1:${server.grpcPort}`, grpc.credentials.createInsecure());
});

afterAll(async () => {
  client?.close();
  await server?.dispose();
});

describe("gRPC methods given oversized ids", () => {
  it("refuse them with a status other than INTERNAL, log no error, and the process stays up", async () => {
    const internal: string[] = [];
    let calls = 0;
    for (const long of LONG_VALUES) {
      for (const service of SERVICES) {
        for (const method of service.methods) {
          if (method.methodKind !== "unary") continue;
          const path = `/${service.typeName}/${method.name}`;
          const request = create(method.input, withLongStrings(method.input, long) as never);
          const bytes = Buffer.from(toBinary(method.input, request));
          const status = await new Promise<grpc.status>((resolve) => {
            client.makeUnaryRequest(
              path,
              (b: Buffer) => b,
              (b: Buffer) => b,
              bytes,
              { deadline: Date.now() + 10_000 },
              (err) => resolve(err ? err.code : grpc.status.OK),
            );
          });
          calls++;
          if (status === grpc.status.INTERNAL || status === grpc.status.UNKNOWN)
            internal.push(`${path} with ${long.slice(0, 6)}…: ${grpc.status[status]}`);
        }
      }
    }
    expect(calls).toBeGreaterThan(100);
    expect(internal).toEqual([]);
    // Presence writes last-active times a second later, in a batch: give it time to fail, if it would.
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect(server.child.exitCode).toBeNull();
    expect((await fetch(`${server.httpUrl}/readyz`)).status).toBe(200);
    const errorLines = server
      .stderr()
      .split("\n")
      .filter((line) => line.includes('"level":"error"'));
    expect(errorLines.map((line) => line.slice(0, 400))).toEqual([]);
  }, 120_000);
});
