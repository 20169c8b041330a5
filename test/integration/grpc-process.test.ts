/**
 * The gRPC server of `switchboard start` itself: which processes open a gRPC port (role all only
 * when asked, as the README says; the split roles always), the health service in step with
 * /readyz, reflection only when grpc.reflection is on, a caller's deadline on a real server, and
 * the grpc_server_* metrics on /metrics.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { type AddressInfo, createServer } from "node:net";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../gen/grpc/health/v1/health_pb.js";
import { ServerReflection } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { newKey } from "../../internal/grpc-auth/key-file.js";
import { Code } from "../../internal/lib/errors.js";
import { grpcClient } from "../../internal/lib/rpc.js";
import { freePort, listeningPorts } from "../helpers/grpc.js";
import { sampleOf, scrape } from "../helpers/metrics.js";
import { cliPath, type ServerProcess, startServer, tempDir } from "../helpers/server.js";

const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

/** A process in dev mode: its gRPC port needs no credentials (what these tests are not about). */
async function start(options: Parameters<typeof startServer>[0]): Promise<ServerProcess> {
  const server = await startServer({ ...options, args: [...(options?.args ?? []), "--dev"] });
  cleanup.push(() => server.dispose());
  return server;
}

function client<S extends Parameters<typeof grpcClient>[0]>(service: S, port: number) {
  const c = grpcClient(service, `127.0.0.1:${port}`);
  cleanup.push(() => c.close());
  return c;
}

describe("gRPC port", () => {
  it("role all opens none unless asked: --grpc-port, grpc.enabled or a non-zero grpc.port", async () => {
    const plain = await start({});
    expect(plain.grpcPort).toBe(0);
    expect(await listeningPorts(plain.child.pid!)).toEqual([plain.port]);

    const flag = await start({ args: ["--grpc-port", "0"] });
    expect(flag.grpcPort).toBeGreaterThan(0);
    expect(await listeningPorts(flag.child.pid!)).toEqual([flag.port, flag.grpcPort].sort((a, b) => a - b));

    const port = await freePort();
    const env = await start({ env: { SWITCHBOARD_GRPC_PORT: String(port) } });
    expect(env.grpcPort).toBe(port);
    expect((await client(Health, port).check({})).status).toBe(Serving.SERVING);

    const enabled = await start({ env: { SWITCHBOARD_GRPC_ENABLED: "true" } });
    expect(enabled.grpcPort).toBeGreaterThan(0);
  });

  it("does not open a gRPC port without authentication outside dev mode (ADR 0007)", async () => {
    await expect(startServer({ args: ["--role", "id"] })).rejects.toThrow(
      /the gRPC port has no authentication: set grpc.keyFile, grpc.tokenAudience or grpc.tls.dir/,
    );
    await expect(startServer({ args: ["--grpc-port", "0"] })).rejects.toThrow(/no authentication/);
    // With a key file it needs no dev mode.
    const dir = tempDir();
    cleanup.push(() => dir.remove());
    writeFileSync(join(dir.path, "keys"), `${newKey("role:gateway").line}\n`);
    const id = await startServer({
      args: ["--role", "id"],
      env: { SWITCHBOARD_GRPC_KEY_FILE: join(dir.path, "keys") },
    });
    cleanup.push(() => id.dispose());
    expect(id.grpcPort).toBeGreaterThan(0);
  });

  it("exits when its gRPC port is taken, rather than serving /healthz without it", async () => {
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, "127.0.0.1", r));
    cleanup.push(() => new Promise((r) => taken.close(r)));
    const port = (taken.address() as AddressInfo).port;
    // startServer rejects when the process exits before it is ready; before, it stayed up (HTTP open).
    await expect(start({ args: ["--grpc-port", String(port)] })).rejects.toThrow(/exited/);
  });

  it("a split role always serves gRPC, with the health service", async () => {
    const id = await start({ args: ["--role", "id"] });
    expect(id.grpcPort).toBeGreaterThan(0);
    expect(await listeningPorts(id.child.pid!)).toContain(id.grpcPort);
    const health = client(Health, id.grpcPort);
    expect((await health.check({ service: "" })).status).toBe(Serving.SERVING);
    expect((await health.check({ service: "switchboard.id.v1.IdService" })).status).toBe(Serving.SERVING);
    await expect(health.check({ service: "switchboard.router.v1.RouterService" })).rejects.toMatchObject({
      code: Code.NOT_FOUND,
      reason: "SERVICE_UNKNOWN",
    });
  });
});

describe("health", () => {
  it("Watch sees SERVING, then NOT_SERVING when the process stops, and the stream ends", async () => {
    const id = await start({ args: ["--role", "id"] });
    const seen: Serving[] = [];
    const watching = (async () => {
      for await (const r of client(Health, id.grpcPort).watch({ service: "switchboard.id.v1.IdService" }))
        seen.push(r.status);
    })();
    await expect.poll(() => seen).toEqual([Serving.SERVING]);
    const t0 = Date.now();
    await id.stop();
    await watching;
    expect(seen).toEqual([Serving.SERVING, Serving.NOT_SERVING]);
    // The open Watch did not hold the shutdown for the 5 s grace period.
    expect(Date.now() - t0).toBeLessThan(3_000);
  });

  it("says NOT_SERVING while /readyz says 503 (storage unreachable)", async () => {
    const [http, grpcPort] = [await freePort(), await freePort()];
    const dir = tempDir();
    cleanup.push(() => dir.remove());
    // A push process whose Kafka and Cassandra do not answer: it waits for them, alive but not ready.
    const child: ChildProcess = spawn(
      process.execPath,
      [cliPath, "start", "--role", "push", "--backend", "distributed", "--port", String(http), "--dev"],
      {
        env: {
          ...process.env,
          SWITCHBOARD_LOG_LEVEL: "error",
          SWITCHBOARD_DATA_DIR: dir.path,
          SWITCHBOARD_GRPC_PORT: String(grpcPort),
          SWITCHBOARD_KAFKA_BROKERS: "127.0.0.1:1",
          SWITCHBOARD_CASSANDRA_CONTACT_POINTS: "127.0.0.1:1",
        },
        stdio: "ignore",
      },
    );
    const exited = new Promise((r) => child.once("exit", r));
    cleanup.push(async () => {
      child.kill("SIGKILL");
      await exited;
    });
    await expect
      .poll(
        () =>
          fetch(`http://127.0.0.1:${http}/readyz`).then(
            (r) => r.status,
            () => 0,
          ),
        { timeout: 20_000 },
      )
      .toBe(503);
    const health = client(Health, grpcPort);
    expect((await health.check({ service: "" })).status).toBe(Serving.NOT_SERVING);
    // PushService is added once storage is open: until then it is declared, not served.
    expect((await health.check({ service: "switchboard.push.v1.PushService" })).status).toBe(
      Serving.NOT_SERVING,
    );
    // A service the process does not serve at all is unknown.
    await expect(health.check({ service: "switchboard.id.v1.IdService" })).rejects.toMatchObject({
      code: Code.NOT_FOUND,
    });
  });
});

describe("reflection", () => {
  async function listServices(port: number): Promise<string[]> {
    async function* one() {
      yield { messageRequest: { case: "listServices" as const, value: "" } };
    }
    const names: string[] = [];
    for await (const r of client(ServerReflection, port).serverReflectionInfo(one()))
      if (r.messageResponse.case === "listServicesResponse")
        names.push(...r.messageResponse.value.service.map((s) => s.name));
    return names;
  }

  it("is off unless grpc.reflection is on", async () => {
    const off = await start({ args: ["--role", "id"] });
    await expect(listServices(off.grpcPort)).rejects.toMatchObject({ code: Code.UNIMPLEMENTED });
    const on = await start({ args: ["--role", "id"], env: { SWITCHBOARD_GRPC_REFLECTION: "true" } });
    expect(await listServices(on.grpcPort)).toEqual([
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
      "switchboard.id.v1.IdService",
    ]);
  });
});

describe("deadlines and metrics on a real server", () => {
  it("a stream past its deadline ends with DEADLINE_EXCEEDED, counted per method on /metrics", async () => {
    const id = await start({ args: ["--role", "id"] });
    const t0 = Date.now();
    const watch = (async () => {
      for await (const _ of client(Health, id.grpcPort).watch({}, { timeoutMs: 300 })) {
        // SERVING, then nothing: only the deadline ends this stream.
      }
    })();
    await expect(watch).rejects.toMatchObject({ code: Code.DEADLINE_EXCEEDED, reason: "DEADLINE_EXCEEDED" });
    expect(Date.now() - t0).toBeLessThan(2_000);
    const ids = client(IdService, id.grpcPort);
    await ids.allocateIds({ count: 2 });
    await expect(ids.allocateIds({ count: 0 })).rejects.toMatchObject({ reason: "COUNT_OUT_OF_RANGE" });

    const metric = async (series: string) => sampleOf(await scrape(id.httpUrl), series);
    const watchLabels = 'grpc_type="server_stream",grpc_service="grpc.health.v1.Health",grpc_method="Watch"';
    await expect
      .poll(() => metric(`grpc_server_handled_total{${watchLabels},grpc_code="DeadlineExceeded"}`))
      .toBe(1);
    const idLabels = 'grpc_type="unary",grpc_service="switchboard.id.v1.IdService",grpc_method="AllocateIds"';
    expect(await metric(`grpc_server_started_total{${idLabels}}`)).toBe(2);
    expect(await metric(`grpc_server_handled_total{${idLabels},grpc_code="OK"}`)).toBe(1);
    expect(await metric(`grpc_server_handled_total{${idLabels},grpc_code="InvalidArgument"}`)).toBe(1);
    expect(await metric(`grpc_server_handling_seconds_count{${idLabels}}`)).toBe(2);
  });
});

describe("stopping", () => {
  it("a stopping gateway ends the Deliver streams routers hold with OK, without waiting out the grace period", async () => {
    const server = await start({ args: ["--grpc-port", "0"] });
    // What a router does: a Deliver stream whose requests end only when the router closes the link.
    let endRequests!: () => void;
    const routerClosed = new Promise<void>((resolve) => {
      endRequests = resolve;
    });
    cleanup.push(() => endRequests());
    const outcome = (async () => {
      try {
        for await (const _ of client(GatewayService, server.grpcPort).deliver(
          (async function* () {
            yield { userIds: ["nobody"], recheckInboxes: true };
            await routerClosed;
          })(),
        ));
        return "ended with OK";
      } catch (err) {
        return `failed: ${String(err)}`;
      }
    })();
    const deliverLabels =
      'grpc_type="bidi_stream",grpc_service="switchboard.gateway.v1.GatewayService",grpc_method="Deliver"';
    await expect
      .poll(async () => sampleOf(await scrape(server.httpUrl), `grpc_server_started_total{${deliverLabels}}`))
      .toBe(1);
    const t0 = Date.now();
    await server.stop();
    expect(await outcome).toBe("ended with OK");
    // Ending it was the gateway's doing: the gRPC server's 5 s grace period for open streams never ran.
    expect(Date.now() - t0).toBeLessThan(3_000);
  });
});
