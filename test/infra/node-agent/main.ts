/**
 * `node dist/test/infra/node-agent/main.js --kubeconfig K --node NAME --pod-cidr 127.245.0.0/16
 *    --dns 127.243.0.10 --state-dir DIR --image REPO=COMMAND [--image …] [--node-ip IP] [--max-pods N]
 *    [--api-server HOST:PORT]`
 *
 * --api-server: what KUBERNETES_SERVICE_HOST/PORT name in the Pods instead of the unrouted ClusterIP.
 * Runs a NodeAgent until SIGTERM or SIGINT, then stops every container process and deletes the
 * Node. Prints one JSON line on stdout once the Node is registered and the Pods listed (what a
 * parent process waits for); logs go to stderr as JSON lines.
 */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { KubeConfig } from "@kubernetes/client-node";
import { createLogger } from "../../../internal/lib/log.js";
import { NodeAgent } from "./agent.js";
import { parseImageMapping } from "./image.js";

const USAGE =
  "usage: main.js --kubeconfig K --node NAME --pod-cidr CIDR --dns IP --state-dir DIR --image REPO=COMMAND... [--node-ip IP] [--max-pods N] [--api-server HOST:PORT]";

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      kubeconfig: { type: "string" },
      node: { type: "string" },
      "pod-cidr": { type: "string" },
      dns: { type: "string" },
      "state-dir": { type: "string" },
      image: { type: "string", multiple: true },
      "node-ip": { type: "string" },
      "max-pods": { type: "string" },
      "api-server": { type: "string" },
    },
    strict: true,
  });
  const need = (name: keyof typeof values): string => {
    const v = values[name];
    if (typeof v !== "string" || v === "") throw new Error(`--${name} is required\n${USAGE}`);
    return v;
  };
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(need("kubeconfig"));
  const log = createLogger();
  const maxPods = values["max-pods"] === undefined ? undefined : Number(values["max-pods"]);
  if (maxPods !== undefined && !(Number.isInteger(maxPods) && maxPods > 0))
    throw new Error("--max-pods must be a positive integer");
  const agent = new NodeAgent({
    kubeConfig,
    nodeName: need("node"),
    podCIDR: need("pod-cidr"),
    dnsIP: need("dns"),
    stateDir: resolve(need("state-dir")),
    images: (values.image ?? []).map(parseImageMapping),
    ...(values["node-ip"] ? { nodeIP: values["node-ip"] } : {}),
    ...(maxPods ? { maxPods } : {}),
    ...(values["api-server"] ? { apiServer: values["api-server"] } : {}),
    log,
  });

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info("stopping the node agent", { signal });
    agent.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error("node agent stop failed", { err });
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));

  const startedAt = performance.now();
  await agent.start();
  process.stdout.write(
    `${JSON.stringify({ status: "started", node: need("node"), startMs: Math.round(performance.now() - startedAt) })}\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`[node-agent] ERROR: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
