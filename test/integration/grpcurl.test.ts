/**
 * grpcurl, the tool backend teams reach for first, against a real `switchboard start`: listing and
 * describing the services through server reflection, the standard health check (with reflection,
 * and without it from the .proto files in proto/), a call, and a failed call whose details show the
 * stable reason. grpcurl is built from the Go module proxy by test/infra/up.sh grpcurl.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { grpcurl, grpcurlPath } from "../helpers/grpc.js";
import { repoRoot, type ServerProcess, startServer } from "../helpers/server.js";

let bin: string;
let all: ServerProcess;
let id: ServerProcess;

beforeAll(async () => {
  bin = await grpcurlPath();
  all = await startServer({
    args: ["--grpc-port", "0", "--dev"],
    env: { SWITCHBOARD_GRPC_REFLECTION: "true" },
  });
  id = await startServer({ args: ["--role", "id", "--dev"] });
  // The first run builds grpcurl (a minute or two on 2 cores, longer while other tests run).
}, 900_000);
afterAll(async () => {
  await all?.dispose();
  await id?.dispose();
});

const at = (s: ServerProcess) => `127.0.0.1:${s.grpcPort}`;

describe("grpcurl", () => {
  it("lists and describes the services through reflection", async () => {
    const list = await grpcurl(bin, ["-plaintext", at(all), "list"]);
    expect(list.stderr).toBe("");
    expect(list.code).toBe(0);
    expect(list.stdout.trim().split("\n")).toEqual([
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
      "switchboard.api.v1.ChatService",
      "switchboard.gateway.v1.GatewayService",
      "switchboard.id.v1.IdService",
      "switchboard.presence.v1.PresenceService",
      "switchboard.push.v1.PushService",
      "switchboard.router.v1.RouterService",
    ]);
    const methods = await grpcurl(bin, [
      "-plaintext",
      at(all),
      "list",
      "switchboard.router.v1.RouterService",
    ]);
    expect(methods.stdout).toContain("switchboard.router.v1.RouterService.SendMessage\n");
    const describe = await grpcurl(bin, [
      "-plaintext",
      at(all),
      "describe",
      "switchboard.router.v1.SendMessageRequest",
    ]);
    expect(describe.code).toBe(0);
    expect(describe.stdout).toMatch(/string conversation_id = \d+;/);
  });

  it("checks health, for the server and for one service", async () => {
    const server = await grpcurl(bin, ["-plaintext", at(all), "grpc.health.v1.Health/Check"]);
    expect(server.code).toBe(0);
    expect(JSON.parse(server.stdout)).toEqual({ status: "SERVING" });
    const router = await grpcurl(bin, [
      "-plaintext",
      "-d",
      '{"service":"switchboard.router.v1.RouterService"}',
      at(all),
      "grpc.health.v1.Health/Check",
    ]);
    expect(JSON.parse(router.stdout)).toEqual({ status: "SERVING" });
  });

  it("checks health without reflection, from the .proto files", async () => {
    const noReflection = await grpcurl(bin, ["-plaintext", at(id), "list"]);
    expect(noReflection.code).not.toBe(0);
    const check = await grpcurl(
      bin,
      [
        "-plaintext",
        "-import-path",
        "proto",
        "-proto",
        "grpc/health/v1/health.proto",
        at(id),
        "grpc.health.v1.Health/Check",
      ],
      { cwd: repoRoot },
    );
    expect(check.stderr).toBe("");
    expect(JSON.parse(check.stdout)).toEqual({ status: "SERVING" });
  });

  it("calls a method, and shows a failure's ErrorInfo", async () => {
    const ok = await grpcurl(bin, [
      "-plaintext",
      "-d",
      '{"count":2}',
      at(all),
      "switchboard.id.v1.IdService/AllocateIds",
    ]);
    expect(ok.code).toBe(0);
    expect((JSON.parse(ok.stdout) as { ids: string[] }).ids).toHaveLength(2);
    const failed = await grpcurl(bin, [
      "-plaintext",
      "-d",
      '{"conversationId":"g:1","idempotencyKey":"x","body":"x"}',
      at(all),
      "switchboard.api.v1.ChatService/Publish",
    ]);
    expect(failed.code).not.toBe(0);
    const out = failed.stdout + failed.stderr;
    expect(out).toContain("Code: NotFound");
    expect(out).toContain('"@type": "type.googleapis.com/google.rpc.ErrorInfo"');
    expect(out).toContain('"reason": "CONVERSATION_NOT_FOUND"');
    expect(out).toContain('"domain": "switchboard.dev"');
  });
});
