/**
 * What every end-to-end test on the Kubernetes test plane sets up the same way: the plane and the
 * storage servers (test/infra), a node agent whose Pods are real `switchboard` processes (ADR 0006),
 * the chart's operator, and a namespace under the restricted Pod Security Standard holding the auth
 * Secret. `close` undoes it all, whatever state the test left; `failureReport` is what a failed test
 * prints (the operator's and the agent's log tails, and each container's).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { DEV_SECRET_FILE } from "../../internal/lib/auth.js";
import { KubeClient } from "../../operator/kube/client.js";
import { ensureServer } from "../infra/servers.js";
import { kubectl as kubectlWith, kubeTools, root, type Tools, waitFor } from "../kube/helpers.js";
import {
  installChartOperator,
  type OperatorProcess,
  removeChartAndClusters,
} from "../kube/operator-process.js";

export interface PlaneOptions {
  /** Short name of the test, in every name it creates (e.g. `e2e`, `e2etls`). */
  name: string;
  /** Third octet of the agent's Pod range (198.19.X.0/24), apart from the other e2e tests'. */
  podSubnet: number;
}

export interface Plane {
  readonly tools: Tools;
  readonly kube: KubeClient;
  readonly operator: OperatorProcess;
  /** Random per run; in the namespace and fit for topic prefixes and keyspaces. */
  readonly suffix: string;
  /** The Node the agent registered (its Pods run as processes). */
  readonly node: string;
  /** The namespace of the test's ChatCluster. */
  readonly namespace: string;
  /** A data dir holding the HMAC secret that the `chat-auth` Secret gives the gateways. */
  readonly tokenDir: string;
  /** Where the agent keeps its Pods (each container's log under `pods/<pod>/`). */
  readonly stateDir: string;
  readonly storage: { kafka: string[]; cassandra: string[]; datacenter: string };
  kubectl(args: string[], input?: string): Promise<string>;
  failureReport(): string;
  close(): Promise<void>;
}

/** `host:port` of the test API server, from the kubeconfig. */
function apiServerHost(tools: Tools): string {
  const kc = new KubeConfig();
  kc.loadFromFile(tools.KUBECONFIG);
  const server = kc.getCurrentCluster()?.server;
  if (!server) throw new Error(`no server in ${tools.KUBECONFIG}`);
  return new URL(server).host;
}

/** The node agent: registers a Node and runs the Pods scheduled onto it as processes. */
async function startAgent(
  tools: Tools,
  node: string,
  options: PlaneOptions,
  dns: string,
  stateDir: string,
): Promise<{ child: ChildProcess; log: () => string }> {
  const child = spawn(
    process.execPath,
    [
      join(root, "dist/test/infra/node-agent/main.js"),
      ...["--kubeconfig", tools.KUBECONFIG, "--node", node],
      // Not loopback: the apiserver refuses loopback IPs in EndpointSlices (the agent routes the range to lo).
      ...["--pod-cidr", `198.19.${options.podSubnet + (process.pid % 10)}.0/24`],
      ...["--dns", dns, "--state-dir", stateDir],
      ...["--image", `switchboard=${process.execPath} ${join(root, "dist/cmd/switchboard.js")}`],
      // The Pods review gRPC callers' tokens with the API server (ADR 0007): its real address.
      ...["--api-server", apiServerHost(tools)],
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let log = "";
  child.stderr?.setEncoding("utf8").on("data", (d: string) => {
    log = (log + d).slice(-100_000);
  });
  let out = "";
  child.stdout?.setEncoding("utf8").on("data", (d: string) => (out += d));
  await waitFor("node agent start", async () => out.includes('"started"') || undefined, 60_000);
  return { child, log: () => log };
}

/** The last lines of every container's log the agent kept (what a failed Pod printed). */
function containerLogTails(stateDir: string): string {
  const out: string[] = [];
  const podsDir = join(stateDir, "pods");
  for (const pod of existsSync(podsDir) ? readdirSync(podsDir) : []) {
    for (const file of readdirSync(join(podsDir, pod)).filter((f) => f.endsWith(".log"))) {
      const tail = readFileSync(join(podsDir, pod, file), "utf8")
        .trimEnd()
        .split("\n")
        .slice(-4)
        .join("\n");
      out.push(`--- ${pod}/${file} ---\n${tail.slice(-1_500)}`);
    }
  }
  return out.slice(0, 12).join("\n");
}

export async function startPlane(options: PlaneOptions): Promise<Plane> {
  const suffix = randomBytes(3).toString("hex");
  const chart = {
    release: `sb${options.name}-${suffix}`,
    systemNamespace: `sb-${options.name}-sys-${suffix}`,
  };
  const namespace = `sb-${options.name}-${suffix}`;
  const node = `sb-${options.name}-node-${suffix}`;
  const tools = await kubeTools();
  const kubeEnv = await ensureServer("kube");
  const servers = { ...(await ensureServer("kafka")), ...(await ensureServer("cassandra")) };
  const kc = new KubeConfig();
  kc.loadFromFile(tools.KUBECONFIG);
  const kube = new KubeClient(kc);
  const kubectl = (args: string[], input?: string) => kubectlWith(tools, args, input);
  const stateDir = mkdtempSync(join(tmpdir(), `switchboard-${options.name}-agent-`));
  const tokenDir = mkdtempSync(join(tmpdir(), `switchboard-${options.name}-token-`));
  let agent: Awaited<ReturnType<typeof startAgent>> | undefined;
  let operator: OperatorProcess | undefined;
  const close = async () => {
    await operator?.kill("SIGTERM");
    // The agent before the namespace: it stops its processes in seconds, whereas deleting the
    // namespace first would wait out every Pod's grace period (50 s for gateways).
    if (agent && agent.child.exitCode === null) {
      const exited = once(agent.child, "exit");
      agent.child.kill("SIGTERM");
      await exited;
    }
    await removeChartAndClusters(tools, chart, namespace);
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(tokenDir, { recursive: true, force: true });
  };
  try {
    const secret = randomBytes(32).toString("hex");
    mkdirSync(tokenDir, { recursive: true });
    writeFileSync(join(tokenDir, DEV_SECRET_FILE), secret, { mode: 0o600 });
    const dns = kubeEnv.CLUSTER_DNS;
    if (!dns) throw new Error("test/infra/up.sh kube printed no CLUSTER_DNS (the plane's CoreDNS)");
    agent = await startAgent(tools, node, options, dns, stateDir);
    operator = await installChartOperator(tools, chart);
    await operator.start();
    await kubectl(["create", "namespace", namespace]);
    await kubectl(["label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"]);
    await kubectl([
      "create",
      "secret",
      "generic",
      "chat-auth",
      "-n",
      namespace,
      `--from-literal=secret=${secret}`,
    ]);
    await waitFor("default ServiceAccount", () =>
      kubectl(["get", "serviceaccount", "default", "-n", namespace]),
    );
  } catch (err) {
    await close().catch(() => undefined);
    throw err;
  }
  const started = { agent, operator };
  return {
    tools,
    kube,
    operator: started.operator,
    suffix,
    node,
    namespace,
    tokenDir,
    stateDir,
    storage: {
      kafka: (servers.KAFKA_BROKERS as string).split(","),
      cassandra: (servers.CASSANDRA_CONTACT_POINTS as string).split(","),
      datacenter: servers.CASSANDRA_DATACENTER ?? "datacenter1",
    },
    kubectl,
    failureReport: () =>
      [
        `--- operator log (tail) ---\n${started.operator.tail(30)}`,
        `--- node agent log (tail) ---\n${started.agent.log().trimEnd().split("\n").slice(-30).join("\n")}`,
        containerLogTails(stateDir),
      ].join("\n"),
    close,
  };
}

/**
 * A test body that, if it fails, first prints the plane's failure report (the plane is looked up
 * when the test runs: it is started in beforeAll).
 */
export function reportingFailure(
  plane: () => Plane | undefined,
  fn: () => Promise<void>,
): () => Promise<void> {
  return async () => {
    try {
      await fn();
    } catch (err) {
      const report = plane()?.failureReport();
      if (report) console.error(report);
      throw err;
    }
  };
}
