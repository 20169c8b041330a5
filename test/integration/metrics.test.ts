/**
 * /metrics of a running platform (either backend) after real traffic: promtool, Prometheus's own
 * linter (from Debian's prometheus package, installed by test/infra/up.sh prometheus), finds nothing to
 * object to, and the message path's histograms, the gRPC server's per-method series and the storage
 * metrics carry samples.
 */
import { execFile } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { grpcClient } from "../../internal/lib/rpc.js";
import { firstSampleOf, sampleOf as sample } from "../helpers/metrics.js";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, runCli, type ServerProcess, startServer, testBackend } from "../helpers/server.js";
import { ensureServer } from "../infra/servers.js";

let server: ServerProcess;
let promtool: string;

beforeAll(async () => {
  const env = await ensureServer("prometheus");
  promtool = env.PROMTOOL!;
  // With gRPC on, so that the grpc_server_* series are checked too.
  server = await startServer({ args: ["--grpc-port", "0", "--dev"] });
});
afterAll(async () => {
  await server?.dispose();
});

function promtoolCheck(text: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(promtool, ["check", "metrics"], (err, stdout, stderr) => {
      if (err && typeof err.code !== "number") return reject(err);
      resolve({ code: typeof err?.code === "number" ? err.code : 0, output: `${stdout}${stderr}`.trim() });
    });
    child.stdin!.end(text);
  });
}

describe("/metrics", () => {
  it("passes promtool check metrics and measures send→ack and send→deliver after a message", async () => {
    const alice = await RawClient.connect(server.url, {
      token: await devToken(server.dataDir, "metrics-alice"),
    });
    const bob = await RawClient.connect(server.url, { token: await devToken(server.dataDir, "metrics-bob") });
    await bob.syncAll();
    const delivered = bob.nextEvent((f) => f.kind.case === "message");
    expectCase(
      await alice.request({
        case: "send",
        value: { target: { case: "toUser", value: "metrics-bob" }, clientMsgId: "m1", body: "measured" },
      }),
      "ack",
    );
    await delivered;
    alice.close();
    bob.close();
    const ids = grpcClient(IdService, `127.0.0.1:${server.grpcPort}`);
    await ids.allocateIds({ count: 1 });
    await ids.allocateIds({ count: 0 }).catch(() => undefined);
    ids.close();

    const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
    const check = await promtoolCheck(text);
    expect(check.output).toBe("");
    expect(check.code).toBe(0);

    expect(sample(text, "switchboard_message_append_seconds_count")).toBeGreaterThanOrEqual(1);
    expect(sample(text, "switchboard_message_delivery_seconds_count")).toBeGreaterThanOrEqual(1);
    // The standard names of the process metrics, not a prefixed copy.
    expect(sample(text, "process_cpu_seconds_total")).toBeGreaterThan(0);
    expect(text).not.toContain("switchboard_process_");
    expect(sample(text, "switchboard_ready")).toBe(1);
    // Which build runs: the package's version, also in the line the process printed once started.
    const version = server.startLine.version;
    expect(version).toMatch(/^\d+\.\d+\.\d+/);
    expect((await runCli(["version"])).lines).toEqual([{ version, node: process.versions.node }]);
    expect(
      sample(text, `switchboard_build_info{version="${version}",node_version="${process.versions.node}"}`),
    ).toBe(1);
    expect(sample(text, "switchboard_gateway_connections_max")).toBeGreaterThan(0);
    const idLabels = 'grpc_type="unary",grpc_service="switchboard.id.v1.IdService",grpc_method="AllocateIds"';
    expect(sample(text, `grpc_server_handled_total{${idLabels},grpc_code="OK"}`)).toBe(1);
    expect(sample(text, `grpc_server_handled_total{${idLabels},grpc_code="InvalidArgument"}`)).toBe(1);
    expect(sample(text, `grpc_server_handling_seconds_count{${idLabels}}`)).toBe(2);
    if (testBackend === "distributed") {
      expect(
        sample(text, 'switchboard_cassandra_request_duration_seconds_count{kind="read",outcome="ok"}'),
      ).toBeGreaterThan(0);
      expect(text).toMatch(
        /^switchboard_kafka_consumer_lag_records\{group="[^"]+sequencer",partition="\d+"\} \d+$/m,
      );
      expect(text).toMatch(
        /^switchboard_kafka_consumer_lag_records\{group="[^"]+inbox",partition="\d+"\} \d+$/m,
      );
      // Its inbox owner is alone in its group, which announces that it checks heads: one round trip
      // (once it has read the group's members, after joining).
      const oneRoundTrip = async () =>
        firstSampleOf(
          await (await fetch(`${server.httpUrl}/metrics`)).text(),
          "switchboard_inbox_owner_one_round_trip",
          'group="',
        );
      const deadline = Date.now() + 15_000;
      while ((await oneRoundTrip()) !== 1 && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 200));
      expect(await oneRoundTrip()).toBe(1);
    } else {
      expect(firstSampleOf(text, "switchboard_inbox_owner_one_round_trip")).toBeUndefined();
    }
  });
  it("counts a socket that has not authenticated in switchboard_gateway_sockets, which the limit counts", async () => {
    const scrape = async () => {
      const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
      return {
        sockets: sample(text, "switchboard_gateway_sockets"),
        connections: sample(text, "switchboard_gateway_connections"),
      };
    };
    const before = await scrape();
    // Two sockets that never send their auth frame, and one that authenticates.
    const bare = await Promise.all(
      [1, 2].map(
        () =>
          new Promise<WebSocket>((resolve, reject) => {
            const ws = new WebSocket(server.url, "switchboard.v1.json");
            ws.once("open", () => resolve(ws));
            ws.once("error", reject);
          }),
      ),
    );
    const carol = await RawClient.connect(server.url, {
      token: await devToken(server.dataDir, "metrics-carol"),
    });
    const during = await scrape();
    expect(during.sockets! - before.sockets!).toBe(3);
    expect(during.connections! - before.connections!).toBe(1);
    for (const ws of bare) ws.close();
    carol.close();
    for (const deadline = Date.now() + 5_000; (await scrape()).sockets !== before.sockets; ) {
      if (Date.now() > deadline) throw new Error("closed sockets still counted");
      await new Promise((r) => setTimeout(r, 50));
    }
  });
});
