/**
 * The node agent (test/infra/node-agent) against the real control plane: a Node of its own whose Pods
 * really run, as local processes of testdata/echo-server.mjs. Every assertion is made against the API
 * server or the running process (its HTTP answers, its log, /proc), never the agent's own account.
 *
 * The agent's pod CIDR is a /24 of 198.19.0.0/16 (the half of the benchmarking range 198.18.0.0/15
 * that kwok's Pods, on 198.18.0.0/16, do not use), made local by the agent: the API server refuses
 * loopback addresses in EndpointSlices (asserted below), so Pod IPs in 127.0.0.0/8 could never be
 * Service endpoints.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeApiError, KubeClient } from "../../operator/kube/client.js";
import { ensureServer } from "../infra/servers.js";
import { kubectl as kubectlWith, root, type Tools, waitFor } from "./helpers.js";

const suffix = randomBytes(3).toString("hex");
const NODE = `sb-agent-${suffix}`;
const NS = `sb-agent-${suffix}`;
/** One /24 per test run, so agents of parallel runs never hand out the same address. */
const CIDR_PREFIX = `198.19.${1 + (process.pid % 254)}`;
const CIDR = `${CIDR_PREFIX}.0/24`;
/** up.sh kube prints it when the plane runs CoreDNS (serving cluster.local from the API server). */
let clusterDns: string | undefined;
const DNS_IP = "127.243.0.10";
const IMAGE = "registry.example/switchboard-tests/echo:v1";
/** Mount points (created on the host by the agent, empty there) live under here. */
const MOUNTS = `/tmp/sb-node-agent-test-${suffix}`;
const SECRET_MOUNT = `${MOUNTS}/secret`;
const READY_MOUNT = `${MOUNTS}/ready`;
const TOLERATION = { key: "switchboard.dev/node-agent", operator: "Exists", effect: "NoSchedule" };

const MAIN_JS = join(root, "dist", "test", "infra", "node-agent", "main.js");
const SOURCE_DIR = join(root, "test", "infra", "node-agent");

let tools: Tools;
let kube: KubeClient;
let stateDir: string;
let agent: ChildProcess | undefined;
let agentLog = "";
let agentExit: Promise<unknown> | undefined;
const timings: Record<string, number> = {};
/** The Node's Ready heartbeat when the suite began: the last test sees it advance. */
let firstHeartbeat = "";

interface NodeJson {
  metadata: { labels: Record<string, string> };
  spec: { taints?: Array<{ key: string; value?: string; effect: string }> };
  status: {
    conditions: Array<{ type: string; status: string; lastHeartbeatTime: string }>;
    allocatable: Record<string, string>;
  };
}

const kubectl = (args: string[], input?: string) => kubectlWith(tools, args, input);
const get = <T>(path: string) => kube.request("GET", path) as Promise<T>;
const podPath = (name: string) => `/api/v1/namespaces/${NS}/pods/${name}`;
const getPod = (name: string) => get<V1Pod>(podPath(name));

/** dist is built by `npm test`; rebuilt here when a node-agent source is newer than it. */
function ensureBuilt(): void {
  const built = existsSync(MAIN_JS) ? statSync(MAIN_JS).mtimeMs : 0;
  const newest = Math.max(
    ...readdirSync(SOURCE_DIR)
      .filter((f) => f.endsWith(".ts") && !f.endsWith(".test.ts"))
      .map((f) => statSync(join(SOURCE_DIR, f)).mtimeMs),
  );
  if (built >= newest) return;
  try {
    execFileSync("npx", ["tsc", "-p", "tsconfig.json"], { cwd: root, stdio: "pipe" });
  } catch (err) {
    // Type errors elsewhere in the repository do not stop the emit; only a missing output does.
    if (!existsSync(MAIN_JS) || statSync(MAIN_JS).mtimeMs < newest) throw err;
  }
}

async function startAgent(timing = "agentStartMs"): Promise<void> {
  const started = performance.now();
  const child = spawn(
    process.execPath,
    [
      MAIN_JS,
      "--kubeconfig",
      tools.KUBECONFIG,
      "--node",
      NODE,
      "--pod-cidr",
      CIDR,
      "--dns",
      clusterDns ?? DNS_IP,
      "--state-dir",
      stateDir,
      "--image",
      `echo=${process.execPath} ${join(SOURCE_DIR, "testdata", "echo-server.mjs")}`,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  agent = child;
  agentExit = once(child, "exit");
  child.stderr?.setEncoding("utf8").on("data", (d: string) => {
    agentLog = (agentLog + d).slice(-300_000);
  });
  let out = "";
  child.stdout?.setEncoding("utf8").on("data", (d: string) => (out += d));
  await waitFor(
    "node agent start",
    async () => {
      if (child.exitCode !== null)
        throw new Error(`agent exited ${child.exitCode}: ${agentLog.slice(-3000)}`);
      return out.includes('"status":"started"');
    },
    60_000,
  );
  timings[timing] = Math.round(performance.now() - started);
}

/** GET http://<ip>:8080<path>: status and body. */
async function http(ip: string, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://${ip}:8080${path}`, { signal: AbortSignal.timeout(5_000) });
  return { status: res.status, body: await res.text() };
}

function echoPod(
  name: string,
  extra: { env?: unknown[]; volumes?: unknown[]; mounts?: unknown[]; grace?: number } = {},
) {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: NS, labels: { app: "echo", run: name } },
    spec: {
      nodeSelector: { "switchboard.dev/node-agent": "true", "kubernetes.io/hostname": NODE },
      tolerations: [TOLERATION],
      terminationGracePeriodSeconds: extra.grace ?? 10,
      containers: [
        {
          name: "echo",
          image: IMAGE,
          ports: [{ name: "http", containerPort: 8080 }],
          env: extra.env ?? [],
          readinessProbe: {
            httpGet: { path: "/readyz", port: "http" },
            periodSeconds: 1,
            failureThreshold: 1,
          },
          livenessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 5 },
          volumeMounts: extra.mounts ?? [],
        },
      ],
      volumes: extra.volumes ?? [],
    },
  };
}

const isReady = (pod: V1Pod) =>
  pod.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True");

function inCidr(ip: string | undefined): boolean {
  return !!ip && ip.startsWith(`${CIDR_PREFIX}.`) && ip !== `${CIDR_PREFIX}.0` && ip !== `${CIDR_PREFIX}.255`;
}

/** No such process, or a zombie: killed, waiting for init (its parent, the dead agent, is gone) to reap it. */
function processGone(pid: number): boolean {
  try {
    return /^State:\s*Z/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return true;
  }
}

const pidOf = (pod: V1Pod) =>
  Number(/^agent:\/\/(\d+)$/.exec(pod.status?.containerStatuses?.[0]?.containerID ?? "")?.[1]);

function logOf(pod: V1Pod): string {
  const m = pod.metadata!;
  const path = join(stateDir, "pods", `${m.namespace}_${m.name}_${m.uid}`, "echo.log");
  return existsSync(path) ? readFileSync(path, "utf8") : "";
}

beforeAll(async () => {
  ensureBuilt();
  // The plane only: this file needs no helm.
  const env = await ensureServer("kube");
  tools = { KUBECONFIG: env.KUBECONFIG!, KUBECTL: env.KUBECTL!, HELM: "" };
  clusterDns = env.CLUSTER_DNS;
  const kc = new KubeConfig();
  kc.loadFromFile(tools.KUBECONFIG);
  kube = new KubeClient(kc);
  stateDir = mkdtempSync(join(tmpdir(), "sb-node-agent-"));
  await kubectl(["create", "namespace", NS]);
  await startAgent();
}, 300_000);

afterAll(async () => {
  if (agent && agent.exitCode === null) {
    agent.kill("SIGTERM");
    await Promise.race([agentExit, new Promise((r) => setTimeout(r, 15_000))]);
    if (agent.exitCode === null) agent.kill("SIGKILL");
  }
  // The Node is gone, so nothing would finish the Pods' graceful deletion: force it.
  await kubectl([
    "delete",
    "pods",
    "--all",
    "-n",
    NS,
    "--force",
    "--grace-period=0",
    "--ignore-not-found",
  ]).catch(() => undefined);
  await kubectl(["delete", "namespace", NS, "--wait=false", "--ignore-not-found"]).catch(() => undefined);
  await kubectl(["delete", "node", NODE, "--ignore-not-found"]).catch(() => undefined);
  rmSync(MOUNTS, { recursive: true, force: true });
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  console.log(`node agent timings: ${JSON.stringify(timings)}`);
});

describe("node agent", () => {
  it("registers a Ready, tainted Node and keeps renewing its Lease", async () => {
    const node = await get<NodeJson>(`/api/v1/nodes/${NODE}`);
    expect(node.metadata.labels).toMatchObject({
      "kubernetes.io/hostname": NODE,
      "switchboard.dev/node-agent": "true",
    });
    expect(node.spec.taints).toContainEqual({
      key: "switchboard.dev/node-agent",
      value: "true",
      effect: "NoSchedule",
    });
    const readyCondition = node.status.conditions.find((c) => c.type === "Ready");
    expect(readyCondition?.status).toBe("True");
    firstHeartbeat = readyCondition!.lastHeartbeatTime;
    expect(node.status.allocatable.pods).toBe("64");
    const leasePath = `/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/${NODE}`;
    const lease = await get<{ spec: { holderIdentity: string; renewTime: string } }>(leasePath);
    expect(lease.spec.holderIdentity).toBe(NODE);
    await waitFor(
      "a lease renewal",
      async () => (await get<typeof lease>(leasePath)).spec.renewTime !== lease.spec.renewTime,
      30_000,
    );
  });

  it("runs a Pod: an IP from the CIDR, Ready only once its readiness probe passes, env, DNS, volumes", async () => {
    await kubectl(
      ["apply", "-f", "-"],
      JSON.stringify({
        apiVersion: "v1",
        kind: "List",
        items: [
          {
            apiVersion: "v1",
            kind: "ConfigMap",
            metadata: { name: "cfg", namespace: NS },
            data: { MODE: "fast", LEVEL: "3" },
          },
          {
            apiVersion: "v1",
            kind: "Secret",
            metadata: { name: "creds", namespace: NS },
            stringData: { password: "s3cret" },
          },
        ],
      }),
    );
    const pod = echoPod("web-a", {
      env: [
        { name: "READY_FILE", value: `${READY_MOUNT}/now` },
        { name: "POD_NAME", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } },
        { name: "POD_IP", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } },
        { name: "APP", valueFrom: { fieldRef: { fieldPath: "metadata.labels['app']" } } },
        { name: "PASSWORD", valueFrom: { secretKeyRef: { name: "creds", key: "password" } } },
        { name: "LEVEL", value: "override" },
        { name: "METRICS_ADDR", value: "$(POD_IP):9090" },
        { name: "ESCAPED", value: "$$(POD_IP)" },
        { name: "UNKNOWN", value: "$(NOT_DEFINED)" },
      ],
      volumes: [
        { name: "ready", emptyDir: {} },
        { name: "secret", secret: { secretName: "creds", defaultMode: 0o400 } },
      ],
      mounts: [
        { name: "ready", mountPath: READY_MOUNT },
        { name: "secret", mountPath: SECRET_MOUNT, readOnly: true },
      ],
    }) as { spec: { containers: Array<Record<string, unknown>> } };
    pod.spec.containers[0]!.envFrom = [
      { configMapRef: { name: "cfg" }, prefix: "CFG_" },
      { configMapRef: { name: "cfg" } },
    ];
    await kubectl(["apply", "-f", "-"], JSON.stringify(pod));

    const running = await waitFor("web-a running", async () => {
      const p = await getPod("web-a");
      return p.status?.containerStatuses?.[0]?.state?.running ? p : undefined;
    });
    const ip = running.status!.podIP!;
    expect(inCidr(ip)).toBe(true);
    expect(running.status?.podIPs).toEqual([{ ip }]);
    expect(running.status?.hostIP).toBe("127.0.0.1");
    expect(running.status?.containerStatuses?.[0]?.containerID).toMatch(/^agent:\/\/\d+$/);

    // The process serves, but its readiness probe fails while READY_FILE is missing: not Ready.
    await waitFor("web-a serving", async () => (await http(ip, "/readyz")).status === 503);
    await new Promise((r) => setTimeout(r, 2_500));
    const unready = await getPod("web-a");
    expect(isReady(unready)).toBe(false);
    expect(unready.status?.containerStatuses?.[0]?.ready).toBe(false);
    expect(unready.status?.phase).toBe("Running");

    // The emptyDir lives in the state dir; the file appears at READY_FILE inside the container.
    const readyDir = join(stateDir, "pods", running.metadata!.uid!, "volumes", "ready");
    writeFileSync(join(readyDir, "now"), "");
    const ready = await waitFor("web-a Ready", async () => {
      const p = await getPod("web-a");
      return isReady(p) ? p : undefined;
    });
    expect(ready.status?.containerStatuses?.[0]?.ready).toBe(true);
    expect(ready.status?.conditions?.find((c) => c.type === "ContainersReady")?.status).toBe("True");

    const env = JSON.parse((await http(ip, "/env")).body) as Record<string, string>;
    expect(env).toMatchObject({
      POD_NAME: "web-a",
      POD_IP: ip,
      APP: "echo",
      PASSWORD: "s3cret",
      MODE: "fast",
      CFG_MODE: "fast",
      CFG_LEVEL: "3",
      LEVEL: "override", // env overrides envFrom
      METRICS_ADDR: `${ip}:9090`,
      ESCAPED: "$(POD_IP)",
      UNKNOWN: "$(NOT_DEFINED)",
      SWITCHBOARD_NODE_AGENT_POD_IP: ip,
    });
    const svc = await get<{ spec: { clusterIP: string } }>("/api/v1/namespaces/default/services/kubernetes");
    expect(env.KUBERNETES_SERVICE_HOST).toBe(svc.spec.clusterIP);

    const resolv = (await http(ip, "/resolv")).body;
    expect(resolv).toContain(`nameserver ${clusterDns ?? DNS_IP}`);
    expect(resolv).toContain(`search ${NS}.svc.cluster.local svc.cluster.local cluster.local`);
    expect(resolv).toContain("options ndots:5");
    expect((await http(ip, "/hostname")).body).toBe("web-a");

    // The secret volume is mounted in the container's own mount namespace: readable there, while
    // the mount point on the host stays an empty directory.
    expect(await http(ip, `/file?path=${SECRET_MOUNT}/password`)).toEqual({ status: 200, body: "s3cret" });
    expect(readdirSync(SECRET_MOUNT)).toEqual([]);

    // The ServiceAccount admission plugin's projected volume: a bound token, the CA, the namespace.
    const sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    expect((await http(ip, `/file?path=${sa}/namespace`)).body).toBe(NS);
    expect((await http(ip, `/file?path=${sa}/token`)).body).toMatch(/^eyJ[\w-]+\.[\w-]+\.[\w-]+$/);
    expect((await http(ip, `/file?path=${sa}/ca.crt`)).body).toContain("BEGIN CERTIFICATE");
  });

  it("times a Pod from creation to Ready", async () => {
    const t0 = performance.now();
    await kubectl(["apply", "-f", "-"], JSON.stringify(echoPod("web-b")));
    await waitFor("web-b Ready", async () => isReady(await getPod("web-b")));
    // Includes the echo server's own 1 s of 503s and the 1 s probe period.
    timings.podCreateToReadyMs = Math.round(performance.now() - t0);
  });

  it("lets two Pods bind 0.0.0.0:8080 each, on their own IPs", async () => {
    const [a, b] = await Promise.all([getPod("web-a"), getPod("web-b")]);
    expect(a.status?.podIP).not.toBe(b.status?.podIP);
    expect(inCidr(b.status?.podIP)).toBe(true);
    expect((await http(a.status!.podIP!, "/hostname")).body).toBe("web-a");
    expect((await http(b.status!.podIP!, "/hostname")).body).toBe("web-b");
    expect(logOf(b)).toContain(`listening on ${b.status!.podIP}:8080`);
  });

  it("restarts a container that exits, counting it, and the Pod is Ready again", async () => {
    const before = await getPod("web-b");
    const ip = before.status!.podIP!;
    expect((await http(ip, "/exit")).status).toBe(200);
    const after = await waitFor("web-b restarted and Ready", async () => {
      const p = await getPod("web-b");
      return p.status?.containerStatuses?.[0]?.restartCount === 1 && isReady(p) ? p : undefined;
    });
    const status = after.status!.containerStatuses![0]!;
    expect(status.lastState?.terminated).toMatchObject({ exitCode: 3, reason: "Error" });
    expect(status.containerID).not.toBe(before.status?.containerStatuses?.[0]?.containerID);
    expect(after.status?.podIP).toBe(ip);
    expect((await http(ip, "/hostname")).body).toBe("web-b");
  });

  it("restarts a container whose liveness probe fails; a force-deleted Pod's process is killed", async () => {
    const pod = echoPod("web-live") as { spec: { containers: Array<Record<string, unknown>> } };
    pod.spec.containers[0]!.livenessProbe = {
      httpGet: { path: "/no-such-path", port: 8080 }, // 404
      initialDelaySeconds: 1,
      periodSeconds: 1,
      failureThreshold: 2,
    };
    await kubectl(["apply", "-f", "-"], JSON.stringify(pod));
    const restarted = await waitFor("web-live restarted by its liveness probe", async () => {
      const p = await getPod("web-live");
      return (p.status?.containerStatuses?.[0]?.restartCount ?? 0) >= 1 ? p : undefined;
    });
    expect(restarted.status?.containerStatuses?.[0]?.lastState?.terminated).toBeDefined();
    expect(logOf(restarted)).toContain("SIGTERM received");
    await waitFor("a Killing event for the liveness failure", async () => {
      const events = await get<{
        items: Array<{ reason: string; message: string; involvedObject: { name: string } }>;
      }>(`/api/v1/namespaces/${NS}/events`);
      return events.items.some(
        (e) =>
          e.involvedObject.name === "web-live" && e.reason === "Killing" && e.message.includes("liveness"),
      );
    });
    const pid = await waitFor(
      "web-live running again",
      async () => pidOf(await getPod("web-live")) || undefined,
    );
    // Gone from the API server at once: the agent only learns it from the watch, and kills.
    await kubectl(["delete", "pod", "web-live", "-n", NS, "--force", "--grace-period=0"]);
    await waitFor("web-live's process killed", async () => processGone(pid), 10_000);
  });

  it("ends a restartPolicy Never Pod whose container exits: Failed, exit code kept", async () => {
    const pod = echoPod("once") as { spec: Record<string, unknown> };
    pod.spec.restartPolicy = "Never";
    await kubectl(["apply", "-f", "-"], JSON.stringify(pod));
    const ready = await waitFor("once Ready", async () => {
      const p = await getPod("once");
      return isReady(p) ? p : undefined;
    });
    await http(ready.status!.podIP!, "/exit");
    const done = await waitFor("once Failed", async () => {
      const p = await getPod("once");
      return p.status?.phase === "Failed" ? p : undefined;
    });
    const status = done.status!.containerStatuses![0]!;
    expect(status.state?.terminated).toMatchObject({ exitCode: 3, reason: "Error" });
    expect(status.restartCount).toBe(0);
    expect(isReady(done)).toBe(false);
    await kubectl(["delete", "pod", "once", "-n", NS, "--wait=false"]);
  });

  it("waits with CreateContainerConfigError for a missing ConfigMap, and refuses a relative command", async () => {
    const waiting = echoPod("web-c") as { spec: { containers: Array<Record<string, unknown>> } };
    waiting.spec.containers[0]!.envFrom = [{ configMapRef: { name: "later" } }];
    const refused = echoPod("web-d") as { spec: { containers: Array<Record<string, unknown>> } };
    refused.spec.containers[0]!.command = ["sh"];
    await kubectl(
      ["apply", "-f", "-"],
      JSON.stringify({ apiVersion: "v1", kind: "List", items: [waiting, refused] }),
    );

    const c = await waitFor("web-c waiting", async () => {
      const p = await getPod("web-c");
      return p.status?.containerStatuses?.[0]?.state?.waiting?.reason === "CreateContainerConfigError"
        ? p
        : undefined;
    });
    expect(c.status?.containerStatuses?.[0]?.state?.waiting?.message).toContain(
      'configmap "later" not found',
    );
    const d = await waitFor("web-d refused", async () => {
      const p = await getPod("web-d");
      return p.status?.containerStatuses?.[0]?.state?.waiting?.reason === "CreateContainerError"
        ? p
        : undefined;
    });
    expect(d.status?.containerStatuses?.[0]?.state?.waiting?.message).toContain("not an absolute path");
    await waitFor("a Failed event for web-d", async () => {
      const events = await get<{
        items: Array<{ reason: string; message: string; involvedObject: { name: string } }>;
      }>(`/api/v1/namespaces/${NS}/events`);
      return events.items.some(
        (e) => e.involvedObject.name === "web-d" && e.reason === "Failed" && e.message.includes("absolute"),
      );
    });

    // The ConfigMap appears: the agent retries and the container starts.
    await kubectl(["create", "configmap", "later", "-n", NS, "--from-literal=LATE=yes"]);
    const started = await waitFor("web-c Ready", async () => {
      const p = await getPod("web-c");
      return isReady(p) ? p : undefined;
    });
    expect(JSON.parse((await http(started.status!.podIP!, "/env")).body).LATE).toBe("yes");
    await kubectl(["delete", "pod", "web-c", "web-d", "-n", NS, "--wait=false"]);
  });

  it("deletes a Pod gracefully: SIGTERM first, gone from the API server within its grace period", async () => {
    const pod = await getPod("web-a");
    const pid = pidOf(pod);
    expect(processGone(pid)).toBe(false);
    const t0 = performance.now();
    await kubectl(["delete", "pod", "web-a", "-n", NS, "--wait=false"]);
    await waitFor(
      "web-a gone",
      async () => {
        try {
          await getPod("web-a");
          return false;
        } catch (err) {
          if (err instanceof KubeApiError && err.status === 404) return true;
          throw err;
        }
      },
      20_000,
    );
    const tookMs = performance.now() - t0;
    timings.deleteToGoneMs = Math.round(tookMs);
    expect(tookMs).toBeLessThan(10_000); // terminationGracePeriodSeconds
    expect(logOf(pod)).toContain("SIGTERM received");
    await waitFor("web-a's process gone", async () => processGone(pid), 5_000);
  });

  it("runs a Deployment of 2 replicas whose EndpointSlice lists both Pod IPs as ready", async () => {
    const template = echoPod("unused") as {
      metadata: Record<string, unknown>;
      spec: Record<string, unknown>;
    };
    await kubectl(
      ["apply", "-f", "-"],
      JSON.stringify({
        apiVersion: "v1",
        kind: "List",
        items: [
          {
            apiVersion: "apps/v1",
            kind: "Deployment",
            metadata: { name: "echo", namespace: NS },
            spec: {
              replicas: 2,
              selector: { matchLabels: { app: "echo-deploy" } },
              template: { metadata: { labels: { app: "echo-deploy" } }, spec: template.spec },
            },
          },
          {
            apiVersion: "v1",
            kind: "Service",
            metadata: { name: "echo", namespace: NS },
            spec: {
              selector: { app: "echo-deploy" },
              ports: [{ name: "http", port: 80, targetPort: "http" }],
            },
          },
        ],
      }),
    );
    const pods = await waitFor("2 ready replicas", async () => {
      const list = await get<{ items: V1Pod[] }>(
        `/api/v1/namespaces/${NS}/pods?labelSelector=app%3Decho-deploy`,
      );
      const ready = list.items.filter((p) => !p.metadata?.deletionTimestamp && isReady(p));
      return ready.length === 2 ? ready : undefined;
    });
    const ips = pods.map((p) => p.status!.podIP!).sort();
    for (const p of pods) {
      // A real process per replica, started by the agent for this Pod.
      const environ = readFileSync(`/proc/${pidOf(p)}/environ`, "utf8").split("\0");
      expect(environ).toContain(`SWITCHBOARD_NODE_AGENT_POD_IP=${p.status!.podIP}`);
      expect((await http(p.status!.podIP!, "/hostname")).body).toBe(p.metadata!.name);
    }
    await waitFor("an EndpointSlice with both IPs ready", async () => {
      const slices = await get<{
        items: Array<{ endpoints?: Array<{ addresses: string[]; conditions?: { ready?: boolean } }> }>;
      }>(
        `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Decho`,
      );
      const ready = slices.items
        .flatMap((s) => s.endpoints ?? [])
        .filter((e) => e.conditions?.ready)
        .flatMap((e) => e.addresses)
        .sort();
      return JSON.stringify(ready) === JSON.stringify(ips);
    });
  });

  it("resolves a headless Service to its Pods through the cluster DNS, from inside a Pod", async (ctx) => {
    if (!clusterDns) return ctx.skip(); // a plane without CoreDNS
    await kubectl(
      ["apply", "-f", "-"],
      JSON.stringify({
        apiVersion: "v1",
        kind: "Service",
        metadata: { name: "echo-headless", namespace: NS },
        spec: { clusterIP: "None", selector: { app: "echo-deploy" }, ports: [{ name: "http", port: 8080 }] },
      }),
    );
    const list = await get<{ items: V1Pod[] }>(
      `/api/v1/namespaces/${NS}/pods?labelSelector=app%3Decho-deploy`,
    );
    const live = list.items.filter((p) => !p.metadata?.deletionTimestamp && isReady(p));
    const ips = live.map((p) => p.status!.podIP!).sort();
    const from = live[0]!.status!.podIP!;
    // A short name: the Pod's resolv.conf search path (<ns>.svc.cluster.local first) completes it.
    await waitFor("echo-headless resolving to both replicas", async () => {
      const r = await http(from, "/lookup?name=echo-headless");
      return r.status === 200 && r.body === JSON.stringify(ips);
    });
    const svc = await get<{ spec: { clusterIP: string } }>("/api/v1/namespaces/default/services/kubernetes");
    expect(JSON.parse((await http(from, "/lookup?name=kubernetes.default")).body)).toEqual([
      svc.spec.clusterIP,
    ]);
  });

  it("(why the pod CIDR is not loopback) the API server refuses 127.x addresses in EndpointSlices", async () => {
    const slice = {
      apiVersion: "discovery.k8s.io/v1",
      kind: "EndpointSlice",
      metadata: { name: "loopback-probe", namespace: NS },
      addressType: "IPv4",
      endpoints: [{ addresses: ["127.245.0.1"] }],
      ports: [],
    };
    await expect(kubectl(["create", "--dry-run=server", "-f", "-"], JSON.stringify(slice))).rejects.toThrow(
      /loopback/,
    );
  });

  it("has kept the Node Ready, its heartbeat advancing", async () => {
    const ready = await waitFor(
      "a newer Ready heartbeat",
      async () => {
        const node = await get<NodeJson>(`/api/v1/nodes/${NODE}`);
        const c = node.status.conditions.find((x) => x.type === "Ready");
        return c && Date.parse(c.lastHeartbeatTime) > Date.parse(firstHeartbeat) ? c : undefined;
      },
      40_000,
    );
    expect(ready.status).toBe("True");
    const node = await get<NodeJson>(`/api/v1/nodes/${NODE}`);
    // The node lifecycle controller taints nodes it thinks unhealthy.
    expect((node.spec.taints ?? []).map((t) => t.key)).not.toContain("node.kubernetes.io/unreachable");
  });

  it("after an agent crash, the next agent kills the old processes and adopts the Pods", async () => {
    const before = await getPod("web-b");
    const oldPid = pidOf(before);
    const restarts = before.status!.containerStatuses![0]!.restartCount;
    agent!.kill("SIGKILL");
    await agentExit;
    // Container processes outlive the agent (their own sessions, no pipes to it).
    expect(processGone(oldPid)).toBe(false);
    agentLog = "";
    await startAgent("agentRestartMs");
    expect(agentLog).toContain("killed a container process left by a previous agent run");
    await waitFor("the old process gone", async () => processGone(oldPid), 5_000);
    const after = await waitFor("web-b adopted and Ready", async () => {
      const p = await getPod("web-b");
      return isReady(p) && pidOf(p) !== oldPid ? p : undefined;
    });
    expect(after.status?.podIP).toBe(before.status?.podIP);
    expect(after.status?.containerStatuses?.[0]?.restartCount).toBe(restarts + 1);
    expect((await http(after.status!.podIP!, "/hostname")).body).toBe("web-b");
  });

  it("on SIGTERM stops every container process and deletes the Node", async () => {
    const list = await get<{ items: V1Pod[] }>(`/api/v1/namespaces/${NS}/pods`);
    const pids = list.items.map(pidOf).filter((p) => Number.isInteger(p) && p > 0);
    expect(pids.length).toBeGreaterThan(0);
    const t0 = performance.now();
    agent!.kill("SIGTERM");
    await agentExit;
    timings.agentStopMs = Math.round(performance.now() - t0);
    expect(agent!.exitCode).toBe(0);
    for (const pid of pids) expect(processGone(pid)).toBe(true);
    await expect(get(`/api/v1/nodes/${NODE}`)).rejects.toMatchObject({ status: 404 });
  });
});
