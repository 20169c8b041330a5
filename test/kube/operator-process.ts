/**
 * The operator as the tests run it: a real `switchboard operator` process outside the cluster,
 * authenticated as the chart's ServiceAccount (so it has exactly the chart's RBAC), with its log kept
 * for failure messages.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { CHART_DIR, helm, kubectl, root, type Tools, waitFor } from "./helpers.js";

export interface OperatorOptions {
  kubeconfig: string;
  leaseNamespace: string;
  leaseName: string;
  pollInterval?: string;
  /** Extra environment (e.g. tracing's). */
  env?: Record<string, string>;
  /** `--service-account` (its gRPC identity) and `--token-review-cluster-role`, as the chart passes them. */
  serviceAccount?: string;
  tokenReviewClusterRole?: string;
  /** `--watch-namespaces`, as the chart passes its `watchNamespaces`. */
  watchNamespaces?: string[];
}

export class OperatorProcess {
  child: ChildProcess | undefined;
  log = "";
  port = 0;

  constructor(private readonly o: OperatorOptions) {}

  /** Another process (not started) of the same operator, with some options changed. */
  withOptions(changes: Partial<OperatorOptions>): OperatorProcess {
    return new OperatorProcess({ ...this.o, ...changes });
  }

  async start(): Promise<void> {
    const child = spawn(
      process.execPath,
      [
        join(root, "dist", "cmd", "switchboard.js"),
        "operator",
        "--http-port",
        "0",
        "--http-host",
        "127.0.0.1",
        "--lease-namespace",
        this.o.leaseNamespace,
        "--lease-name",
        this.o.leaseName,
        "--poll-interval",
        this.o.pollInterval ?? "1s",
        ...(this.o.serviceAccount ? ["--service-account", this.o.serviceAccount] : []),
        ...(this.o.tokenReviewClusterRole
          ? ["--token-review-cluster-role", this.o.tokenReviewClusterRole]
          : []),
        ...(this.o.watchNamespaces?.length ? ["--watch-namespaces", this.o.watchNamespaces.join(",")] : []),
      ],
      {
        env: { ...process.env, ...this.o.env, KUBECONFIG: this.o.kubeconfig },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    this.child = child;
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      this.log = (this.log + d).slice(-200_000);
    });
    let out = "";
    child.stdout?.setEncoding("utf8").on("data", (d: string) => (out += d));
    const line = await waitFor(
      "operator start",
      async () => out.split("\n").find((l) => l.includes('"status":"started"')),
      30_000,
    );
    this.port = (JSON.parse(line) as { port: number }).port;
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, "exit");
    child.kill(signal);
    await exited;
  }

  tail(lines = 40): string {
    return this.log.trimEnd().split("\n").slice(-lines).join("\n");
  }
}

/** A kubeconfig for a ServiceAccount, with a token from the TokenRequest API. */
export async function serviceAccountKubeconfig(
  tools: Tools,
  namespace: string,
  serviceAccount: string,
): Promise<string> {
  const token = (
    await kubectl(tools, ["create", "token", serviceAccount, "-n", namespace, "--duration=2h"])
  ).trim();
  const admin = new KubeConfig();
  admin.loadFromFile(tools.KUBECONFIG);
  const cluster = admin.getCurrentCluster();
  if (!cluster) throw new Error("admin kubeconfig has no cluster");
  const config = {
    apiVersion: "v1",
    kind: "Config",
    clusters: [
      {
        name: "test",
        cluster: {
          server: cluster.server,
          "certificate-authority-data": cluster.caData,
          "certificate-authority": cluster.caFile,
        },
      },
    ],
    users: [{ name: serviceAccount, user: { token } }],
    contexts: [{ name: "operator", context: { cluster: "test", user: serviceAccount } }],
    "current-context": "operator",
  };
  const path = join(tmpdir(), `switchboard-${namespace}-${serviceAccount}.kubeconfig`);
  writeFileSync(path, JSON.stringify(config), { mode: 0o600 });
  return path;
}

export interface ChartRelease {
  release: string;
  /** Where the chart installs the operator's ServiceAccount, RBAC and Lease. */
  systemNamespace: string;
}

/**
 * `helm install`s the chart (its operator Deployment lands on kwok's fake node and does not run)
 * and returns an operator process that runs here as the chart's ServiceAccount, not yet started.
 */
export async function installChartOperator(
  tools: Tools,
  chart: ChartRelease,
  env?: Record<string, string>,
): Promise<OperatorProcess> {
  const installed = await helm(tools, [
    "install",
    chart.release,
    CHART_DIR,
    "--namespace",
    chart.systemNamespace,
    "--create-namespace",
    "--set",
    "replicaCount=1",
    "--wait",
    "--timeout",
    "120s",
  ]);
  if (installed.code !== 0) throw new Error(`helm install failed: ${installed.stderr}`);
  return new OperatorProcess({
    kubeconfig: await serviceAccountKubeconfig(
      tools,
      chart.systemNamespace,
      `${chart.release}-switchboard-operator`,
    ),
    leaseNamespace: chart.systemNamespace,
    // The chart's own --lease-name (its full name): its Role lets it read and renew that Lease only.
    leaseName: `${chart.release}-switchboard-operator`,
    serviceAccount: `${chart.systemNamespace}/${chart.release}-switchboard-operator`,
    tokenReviewClusterRole: `${chart.release}-switchboard-operator-tokenreview`,
    ...(env ? { env } : {}),
  });
}

/**
 * Removes a test's namespace of ChatClusters (their finalizers need the stopped operator, so they
 * are dropped) and the chart release, without waiting for the namespaces to go.
 */
export async function removeChartAndClusters(
  tools: Tools,
  chart: ChartRelease,
  namespace: string,
): Promise<void> {
  const names = await kubectl(tools, ["get", "chatclusters", "-n", namespace, "-o", "name"]).catch(() => "");
  for (const n of names.split("\n").filter(Boolean))
    await kubectl(tools, [
      "patch",
      n,
      "-n",
      namespace,
      "--type=merge",
      "-p",
      '{"metadata":{"finalizers":null}}',
    ]).catch(() => "");
  await kubectl(tools, ["delete", "namespace", namespace, "--wait=false"]).catch(() => "");
  await helm(tools, ["uninstall", chart.release, "--namespace", chart.systemNamespace]).catch(
    () => undefined,
  );
  await kubectl(tools, ["delete", "namespace", chart.systemNamespace, "--wait=false"]).catch(() => "");
}
