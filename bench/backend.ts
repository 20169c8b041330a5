/**
 * What a run is started with (`--backend`): the Kafka and Cassandra of test/infra if the backend needs
 * them, the system the ladder runs against (one process, or the cluster), and the run's own topic
 * prefix and keyspace, dropped at the end (on success and on failure).
 */
import { DEFAULT_LAYOUT } from "../test/infra/cluster/cluster.js";
import { ClusterSystem } from "./cluster-system.js";
import {
  dropRunState,
  ensureInfra,
  InfraCpu,
  infraPorts,
  type RunNames,
  runNames,
  type SharedInfra,
} from "./infra.js";
import type { BackendName, Settings } from "./options.js";
import { ProcessSystem, type SystemUnderTest } from "./sut.js";

/** What a run is started with: the system the ladder runs against, and what it leaves to clean up. */
export interface Backend {
  readonly name: BackendName;
  /** Kafka and Cassandra (distributed, cluster); undefined on the embedded backend. */
  readonly infra: SharedInfra | undefined;
  /** The run's own topic prefix and keyspace, once they exist. */
  readonly names: RunNames | undefined;
  /** Facts for the summary's env. */
  describe(): Record<string, unknown>;
  /**
   * Starts the system the ladder runs against (nodeArgs: extra node flags, single-process only;
   * cpuProfileDir: a cluster's processes each write their CPU profile there).
   */
  start(nodeArgs: string[], cpuProfileDir?: string): Promise<SystemUnderTest>;
  /** Drops the run's own topics, consumer groups and keyspace unless --keep-data (best effort). */
  cleanup(log: (s: string) => void): Promise<void>;
}

/** Starts (or reuses) Kafka and Cassandra if the backend needs them, and returns the backend. */
export async function openBackend(s: Settings, log: (s: string) => void): Promise<Backend> {
  if (s.backend === "embedded") return embedded(s);
  log(`${s.backend}: starting or reusing Kafka and Cassandra (test/infra/up.sh kafka cassandra)`);
  const env = await ensureInfra(log);
  const cpu = new InfraCpu(infraPorts(env));
  for (const n of ["kafka", "cassandra"] as const)
    log(
      cpu.pids[n] === undefined
        ? `  ${n} JVM not found (by port or pid file): its CPU is n/a`
        : `  ${n} JVM pid ${cpu.pids[n]} (by ${cpu.found[n]})`,
    );
  const infra: SharedInfra = { env, cpu };
  return s.backend === "distributed" ? distributed(s, infra) : cluster(s, infra);
}

function embedded(s: Settings): Backend {
  return {
    name: "embedded",
    infra: undefined,
    names: undefined,
    describe: () => ({}),
    start: (nodeArgs) => ProcessSystem.start("switchboard", s.server, { nodeArgs }),
    cleanup: async () => undefined,
  };
}

/** Drops `names` (unless --keep-data); shared by both backends on infra. */
async function dropNames(
  s: Settings,
  infra: SharedInfra,
  names: RunNames | undefined,
  log: (s: string) => void,
): Promise<void> {
  if (!names) return;
  if (s.server.keepData) {
    log(`kept keyspace ${names.keyspace} and topics ${names.topicPrefix}* (--keep-data)`);
    return;
  }
  const problems = await dropRunState(infra.env, names);
  if (problems.length > 0) log(`cleanup: ${problems.join("; ")}`);
  else log(`dropped keyspace ${names.keyspace}, topics and consumer groups ${names.topicPrefix}*`);
}

function infraFacts(s: Settings, infra: SharedInfra, names?: RunNames): Record<string, unknown> {
  return {
    kafka_brokers: infra.env.KAFKA_BROKERS,
    cassandra_contact_points: infra.env.CASSANDRA_CONTACT_POINTS,
    ...(names ? { topic_prefix: names.topicPrefix, keyspace: names.keyspace } : {}),
    kafka_partitions: s.kafkaPartitions,
    // test/infra/cassandra/up.sh: batch (the tests' node) unless CASSANDRA_COMMITLOG_SYNC=periodic.
    cassandra_commitlog_sync: process.env.CASSANDRA_COMMITLOG_SYNC ?? "batch",
    jvm_pids: infra.cpu.pids,
    jvm_found_by: infra.cpu.found,
    jvm_rss_kb_at_start: infra.cpu.rssKb(),
  };
}

/**
 * The node flags the image runs its processes with (the Dockerfile's NODE_OPTIONS): the distributed
 * server is measured as it ships.
 */
export const SHIPPED_NODE_ARGS = ["--max-semi-space-size=64"];

/** One `switchboard start --backend distributed`, on a topic prefix and keyspace named by the bench. */
function distributed(s: Settings, infra: SharedInfra): Backend {
  const names = runNames();
  return {
    name: "distributed",
    infra,
    names,
    describe: () => ({ ...infraFacts(s, infra, names), server_node_args: SHIPPED_NODE_ARGS.join(" ") }),
    start: (nodeArgs) =>
      ProcessSystem.start("switchboard", s.server, {
        args: ["--backend", "distributed"],
        env: {
          ...infra.env,
          SWITCHBOARD_KAFKA_TOPIC_PREFIX: names.topicPrefix,
          SWITCHBOARD_KAFKA_PARTITIONS: String(s.kafkaPartitions),
          SWITCHBOARD_CASSANDRA_KEYSPACE: names.keyspace,
        },
        // Later flags win: --server-node-args may set another size.
        nodeArgs: [...SHIPPED_NODE_ARGS, ...nodeArgs],
        infra: infra.cpu,
      }),
    cleanup: (log) => dropNames(s, infra, names, log),
  };
}

/** The multi-process cluster, which names its own topic prefix and keyspace when it starts. */
function cluster(s: Settings, infra: SharedInfra): Backend {
  let names: RunNames | undefined;
  return {
    name: "cluster",
    infra,
    get names() {
      return names;
    },
    describe: () => ({ ...infraFacts(s, infra), cluster_layout: DEFAULT_LAYOUT }),
    // No extra node flags: options.ts refuses --perf-rate and --server-node-args here; --cpu-prof
    // profiles every process (cpu-profile-preload.ts).
    start: (_nodeArgs, cpuProfileDir) =>
      ClusterSystem.start(s.server, {
        infra,
        partitions: s.kafkaPartitions,
        ...(cpuProfileDir ? { cpuProfileDir } : {}),
        onNames: (n) => {
          names = n;
        },
      }),
    cleanup: (log) => dropNames(s, infra, names, log),
  };
}
