/**
 * The cluster DNS of the test control plane: CoreDNS on CLUSTER_DNS (test/infra/kube/up.sh) answers
 * cluster.local from this API server, as processes run as Pods see it. kwok runs the Pods (IPs from
 * 198.18.0.0/16, Ready at once), the EndpointSlice controller in kube-controller-manager publishes
 * their addresses, and CoreDNS serves them: a headless Service's name resolves to its ready Pods' IPs,
 * a normal Service's to its ClusterIP, a StatefulSet Pod's own name (<pod>.<service>.<ns>.svc) to
 * its IP; a deleted Pod leaves the answer; unknown names are NXDOMAIN.
 */
import { randomBytes } from "node:crypto";
import { Resolver } from "node:dns/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureServer } from "../infra/servers.js";
import { kubectl as kubectlWith, type Tools, waitFor } from "./helpers.js";

const NS = `sb-dns-${randomBytes(3).toString("hex")}`;
const ZONE = "svc.cluster.local";
let tools: Tools;
let resolver: Resolver;

const kubectl = (args: string[], input?: string) => kubectlWith(tools, args, input);

interface PodList {
  items: { metadata: { name: string }; status: { phase?: string; podIP?: string } }[];
}

/** Name -> IP of the Running Pods matching the selector, once `count` of them have an IP. */
async function podIPs(selector: string, count: number): Promise<Map<string, string>> {
  return waitFor(`${count} running pods ${selector}`, async () => {
    const list = JSON.parse(
      await kubectl(["get", "pods", "-n", NS, "-l", selector, "-o", "json"]),
    ) as PodList;
    const running = list.items.filter((p) => p.status.phase === "Running" && p.status.podIP);
    if (running.length !== count) return undefined;
    return new Map(running.map((p) => [p.metadata.name, p.status.podIP!]));
  });
}

/** The A records of a name, sorted; [] for NXDOMAIN/NODATA (the error code tells which). */
async function lookup(name: string): Promise<string[]> {
  try {
    return (await resolver.resolve4(name)).sort();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOTFOUND" || code === "ENODATA") return [];
    throw err;
  }
}

/** Waits until the A records of `name` are exactly `want` (any order). */
async function expectRecords(name: string, want: string[]): Promise<void> {
  const sorted = [...want].sort();
  let last: string[] = [];
  await waitFor(
    `${name} -> ${sorted.join(",")}`,
    async () => {
      last = await lookup(name);
      return JSON.stringify(last) === JSON.stringify(sorted);
    },
    30_000,
  ).catch((err: Error) => {
    throw new Error(`${err.message} (last answer: [${last.join(",")}])`);
  });
}

beforeAll(async () => {
  const kube = await ensureServer("kube");
  expect(kube.CLUSTER_DNS, "up.sh prints CLUSTER_DNS").toBeTruthy();
  // Only kubectl is used here: no Helm.
  tools = { KUBECONFIG: kube.KUBECONFIG!, KUBECTL: kube.KUBECTL!, HELM: "" };
  resolver = new Resolver({ timeout: 2000, tries: 2 });
  resolver.setServers([kube.CLUSTER_DNS!]);

  await kubectl(["create", "namespace", NS]);
  // ServiceAccount admission refuses Pods until the controller has created "default".
  await waitFor("default ServiceAccount", () => kubectl(["get", "serviceaccount", "default", "-n", NS]));
  const pod = (name: string) => ({
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: NS, labels: { app: "chat-router" } },
    spec: { containers: [{ name: "router", image: "switchboard.invalid/router:test" }] },
  });
  const objects = [
    {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "chat-router", namespace: NS },
      spec: { clusterIP: "None", selector: { app: "chat-router" }, ports: [{ name: "grpc", port: 7000 }] },
    },
    {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "chat-api", namespace: NS },
      spec: { selector: { app: "chat-router" }, ports: [{ name: "http", port: 80, targetPort: 8080 }] },
    },
    pod("chat-router-a"),
    pod("chat-router-b"),
    pod("chat-router-c"),
    {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "chat-store", namespace: NS },
      spec: { clusterIP: "None", selector: { app: "chat-store" }, ports: [{ name: "cql", port: 9042 }] },
    },
    {
      apiVersion: "apps/v1",
      kind: "StatefulSet",
      metadata: { name: "chat-store", namespace: NS },
      spec: {
        serviceName: "chat-store",
        replicas: 2,
        podManagementPolicy: "Parallel",
        selector: { matchLabels: { app: "chat-store" } },
        template: {
          metadata: { labels: { app: "chat-store" } },
          spec: { containers: [{ name: "store", image: "switchboard.invalid/store:test" }] },
        },
      },
    },
  ];
  await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "List", items: objects }));
});

afterAll(async () => {
  if (!tools) return;
  await kubectl(["delete", "namespace", NS, "--wait=false"]).catch(() => "");
});

describe("cluster DNS", () => {
  it("answers a headless Service with the IPs of its ready Pods, from their EndpointSlice", async () => {
    const ips = [...(await podIPs("app=chat-router", 3)).values()];
    for (const ip of ips) expect(ip).toMatch(/^198\.18\./);
    // What CoreDNS reads: the EndpointSlice controller's slices (loopback IPs would be refused here).
    await waitFor("EndpointSlice of chat-router", async () => {
      const slices = JSON.parse(
        await kubectl([
          "get",
          "endpointslices",
          "-n",
          NS,
          "-l",
          "kubernetes.io/service-name=chat-router",
          "-o",
          "json",
        ]),
      ) as { items: { endpoints?: { addresses: string[]; conditions: { ready?: boolean } }[] }[] };
      const ready = slices.items
        .flatMap((s) => s.endpoints ?? [])
        .filter((e) => e.conditions.ready)
        .flatMap((e) => e.addresses);
      return JSON.stringify(ready.sort()) === JSON.stringify([...ips].sort());
    });
    await expectRecords(`chat-router.${NS}.${ZONE}`, ips);
  });

  it("answers a normal Service with its ClusterIP", async () => {
    const clusterIP = (
      await kubectl(["get", "service", "chat-api", "-n", NS, "-o", "jsonpath={.spec.clusterIP}"])
    ).trim();
    expect(clusterIP).toMatch(/^10\./);
    await expectRecords(`chat-api.${NS}.${ZONE}`, [clusterIP]);
    await expectRecords(`kubernetes.default.${ZONE}`, ["10.96.0.1"]);
  });

  it("answers each StatefulSet Pod by name under its governing Service", async () => {
    const pods = await podIPs("app=chat-store", 2);
    expect([...pods.keys()].sort()).toEqual(["chat-store-0", "chat-store-1"]);
    for (const [name, ip] of pods) await expectRecords(`${name}.chat-store.${NS}.${ZONE}`, [ip]);
    await expectRecords(`chat-store.${NS}.${ZONE}`, [...pods.values()]);
  });

  it("drops a deleted Pod from the answer", async () => {
    const pods = await podIPs("app=chat-router", 3);
    await expectRecords(`chat-router.${NS}.${ZONE}`, [...pods.values()]);
    await kubectl(["delete", "pod", "chat-router-b", "-n", NS, "--wait=false"]);
    pods.delete("chat-router-b");
    await expectRecords(`chat-router.${NS}.${ZONE}`, [...pods.values()]);
  });

  it("answers unknown names with NXDOMAIN", async () => {
    for (const name of [
      `no-such-service.${NS}.${ZONE}`,
      `chat-router.no-such-namespace-${randomBytes(3).toString("hex")}.${ZONE}`,
      `chat-store-7.chat-store.${NS}.${ZONE}`,
    ]) {
      // c-ares reports NXDOMAIN as ENOTFOUND (NODATA would be ENODATA).
      await expect(resolver.resolve4(name), name).rejects.toMatchObject({ code: "ENOTFOUND" });
    }
  });
});
