/**
 * Several processes of role all on one distributed storage (Kafka + Cassandra: only there can they
 * share users) share presence over cluster.presenceTargets: a user connected to one process is seen by
 * a watcher on another. Runs in the distributed project only.
 */
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "vitest";
import { signDevToken } from "../../internal/lib/auth.js";
import { freePort } from "../helpers/grpc.js";
import { becomeContact, presenceOf } from "../helpers/presence.js";
import { RawClient } from "../helpers/raw-client.js";
import { type ServerProcess, startServer, tempDir } from "../helpers/server.js";
import { ensureServer } from "../infra/servers.js";

const GRACE_MS = 1_500;
let n = 0;
const user = (name: string) => `${name}-${++n}`;

// Several processes of role all on one distributed storage: only there can they share users.
describe("presence across processes of role all", () => {
  it("shows a user connected to one process to a watcher on another, with cluster.presenceTargets", async () => {
    const id = `pa${Date.now().toString(36)}${process.pid.toString(36)}`;
    const dir = tempDir("switchboard-presence-all-");
    const secretFile = join(dir.path, "secret");
    writeFileSync(secretFile, randomBytes(32).toString("hex"));
    const grpcPorts = [await freePort(), await freePort()];
    const shared = {
      ...(await ensureServer("kafka")),
      ...(await ensureServer("cassandra")),
      SWITCHBOARD_KAFKA_TOPIC_PREFIX: `${id}.`,
      SWITCHBOARD_KAFKA_PARTITIONS: "3",
      SWITCHBOARD_CASSANDRA_KEYSPACE: id,
      SWITCHBOARD_AUTH_SECRET_FILE: secretFile,
      SWITCHBOARD_GRPC_ALLOW_UNAUTHENTICATED: "true",
      SWITCHBOARD_CLUSTER_PRESENCE_TARGETS: grpcPorts.map((p) => `127.0.0.1:${p}`).join(","),
      SWITCHBOARD_PRESENCE_OFFLINE_AFTER_MS: String(GRACE_MS),
      SWITCHBOARD_PRESENCE_HEARTBEAT_INTERVAL_MS: "500",
    };
    const servers: ServerProcess[] = [];
    try {
      for (const [i, grpcPort] of grpcPorts.entries())
        servers.push(
          await startServer({
            args: ["--backend", "distributed"],
            env: {
              ...shared,
              SWITCHBOARD_GRPC_PORT: String(grpcPort),
              SWITCHBOARD_CLUSTER_PRESENCE_SHARD: String(i),
            },
          }),
        );
      const token = (user: string) => signDevToken(dir.path, user, 3600, secretFile);
      const [a, b] = [user("a"), user("b")];
      const watcher = await RawClient.connect(servers[0]!.url, { token: await token(a) });
      await becomeContact(watcher, b, { watch: true });
      // b connects to the other process: its heartbeats reach b's presence shard, wherever that is,
      // and the change reaches the watcher's gateway.
      const device = await RawClient.connect(servers[1]!.url, { token: await token(b) });
      await watcher.nextEvent(presenceOf(b, true), 10_000);
      device.close();
      await watcher.nextEvent(presenceOf(b, false), GRACE_MS + 10_000);
      watcher.close();
    } finally {
      for (const server of servers) await server.dispose();
      dir.remove();
    }
  });
});
