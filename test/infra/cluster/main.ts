/**
 * `node dist/test/infra/cluster/main.js up|down`, run by test/infra/cluster/up.sh and down.sh:
 * starts (or reuses) the local multi-process cluster and prints its KEY=value lines, or stops it.
 */
import { rmSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { LocalCluster } from "./cluster.js";

const runDir = join(
  process.env.SWITCHBOARD_CACHE ?? join(homedir(), ".cache", "switchboard"),
  "run",
  "cluster",
);

function need(name: string): string {
  const v = process.env[name];
  if (!v)
    throw new Error(`${name} is not set (test/infra/cluster/up.sh starts Kafka and Cassandra and sets it)`);
  return v;
}

async function main(command: string | undefined): Promise<void> {
  if (command === "up") {
    let cluster = LocalCluster.attach(runDir);
    const dead = cluster?.state.processes.filter((p) => !cluster!.alive(p.name)) ?? [];
    if (cluster && dead.length > 0) {
      process.stderr.write(
        `[cluster] ${dead.map((p) => p.name).join(", ")} not running; restarting the cluster\n`,
      );
      await cluster.stop();
      cluster = undefined;
    }
    if (cluster) process.stderr.write(`[cluster] reusing the running cluster (${runDir})\n`);
    else {
      rmSync(runDir, { recursive: true, force: true });
      process.stderr.write(`[cluster] starting a multi-process Switchboard (logs in ${runDir})\n`);
      cluster = await LocalCluster.start({
        runDir,
        kafkaBrokers: need("KAFKA_BROKERS"),
        cassandraContactPoints: need("CASSANDRA_CONTACT_POINTS"),
        cassandraDatacenter: process.env.CASSANDRA_DATACENTER ?? "datacenter1",
        basePort: Number(process.env.CLUSTER_PORT ?? 17100),
      });
    }
    process.stdout.write(`${cluster.envLines().join("\n")}\n`);
    return;
  }
  if (command === "down") {
    const cluster = LocalCluster.attach(runDir);
    if (cluster) await cluster.stop();
    return;
  }
  throw new Error("usage: main.js up|down");
}

main(process.argv[2]).catch((err: unknown) => {
  process.stderr.write(`[cluster] ERROR: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
