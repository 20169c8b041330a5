import type {
  KubernetesObject,
  V1ConfigMap,
  V1Deployment,
  V1PodSpec,
  V1ServiceAccount,
  V1StatefulSet,
} from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { parsePolicyFile } from "../../internal/grpc-auth/setup.js";
import { loadConfig } from "../../internal/lib/config.js";
import { exampleSpec } from "../../test/kube/example-spec.js";
import { type ChatCluster, type ChatClusterSpec, COMPONENTS, type ComponentName } from "../api/v1alpha1.js";
import { configHash } from "./config.js";
import { desiredObjects } from "./desired.js";
import { desiredTokenReviewBinding, GRPC_POLICY_DIR, GRPC_TOKEN_DIR } from "./grpc-identity.js";

const spec: ChatClusterSpec = {
  ...exampleSpec,
  api: {
    clients: [
      {
        name: "billing",
        serviceAccount: { namespace: "billing", name: "billing-api" },
        permissions: ["publish", "readHistory"],
        sendAs: ["billing-bot"],
        conversations: { all: true },
      },
      {
        name: "moderation",
        certificate: { uri: "switchboard://client:moderation" },
        permissions: ["manageGroups"],
      },
    ],
  },
};
const cluster: ChatCluster = {
  apiVersion: "switchboard.dev/v1alpha1",
  kind: "ChatCluster",
  metadata: { name: "chat", namespace: "prod", uid: "uid-1", generation: 1 },
  spec,
};
const operatorAccount = { namespace: "switchboard-system", name: "switchboard-operator" };
const objects = desiredObjects(cluster, { gatewayReplicas: 2, operatorAccount });

const find = <T>(kind: string, name: string, from: KubernetesObject[] = objects) =>
  from.find((o) => o.kind === kind && o.metadata?.name === name) as T | undefined;

function podSpec(c: ComponentName, from: KubernetesObject[] = objects): V1PodSpec {
  const kind = c === "id" || c === "presence" ? "StatefulSet" : "Deployment";
  const w = find<V1Deployment | V1StatefulSet>(kind, `chat-${c}`, from);
  if (!w?.spec?.template.spec) throw new Error(`no ${kind} chat-${c}`);
  return w.spec.template.spec;
}

const CALLERS: readonly ComponentName[] = ["gateway", "router", "presence"];
const SERVERS: readonly ComponentName[] = ["gateway", "router", "presence", "push", "id"];

describe("gRPC identity of a ChatCluster's Pods (ADR 0007)", () => {
  it("gives every component a ServiceAccount of its own, owned by the cluster, with no automounted token", () => {
    for (const c of COMPONENTS) {
      const sa = find<V1ServiceAccount>("ServiceAccount", `chat-${c}`);
      expect(sa?.automountServiceAccountToken, c).toBe(false);
      expect(sa?.metadata?.ownerReferences?.[0], c).toMatchObject({ kind: "ChatCluster", uid: "uid-1" });
      const pod = podSpec(c);
      expect(pod.serviceAccountName, c).toBe(`chat-${c}`);
      expect(pod.automountServiceAccountToken, c).toBe(false);
    }
    expect(objects.filter((o) => o.kind === "ServiceAccount")).toHaveLength(COMPONENTS.length);
  });

  it("mounts a projected token bound to the cluster's audience in the components that call others, and sends it", () => {
    for (const c of COMPONENTS) {
      const pod = podSpec(c);
      const volume = pod.volumes?.find((v) => v.name === "grpc-token");
      const env = Object.fromEntries((pod.containers[0]!.env ?? []).map((e) => [e.name, e.value]));
      if (!CALLERS.includes(c)) {
        expect(volume, c).toBeUndefined();
        expect(env.SWITCHBOARD_GRPC_CREDENTIAL_FILE, c).toBeUndefined();
        continue;
      }
      expect(volume?.projected?.sources, c).toEqual([
        { serviceAccountToken: { audience: "switchboard.dev/chat", expirationSeconds: 3600, path: "token" } },
      ]);
      expect(pod.containers[0]!.volumeMounts, c).toContainEqual({
        name: "grpc-token",
        mountPath: GRPC_TOKEN_DIR,
        readOnly: true,
      });
      expect(env.SWITCHBOARD_GRPC_CREDENTIAL_FILE, c).toBe(`${GRPC_TOKEN_DIR}/token`);
    }
  });

  it("lets the serving components review tokens (an API token, the policy file) and configures them to", () => {
    for (const c of COMPONENTS) {
      const pod = podSpec(c);
      const names = (pod.volumes ?? []).map((v) => v.name);
      expect(names.includes("kube-api"), c).toBe(SERVERS.includes(c));
      // Every process reads the policy file at start (the sequencer too, though it serves no gRPC).
      expect(names.includes("grpc-policy"), c).toBe(true);
    }
    const api = podSpec("id").volumes?.find((v) => v.name === "kube-api");
    expect(api?.projected?.sources?.map((s) => Object.keys(s)[0])).toEqual([
      "serviceAccountToken",
      "configMap",
      "downwardAPI",
    ]);
    // The API token has the API server's audience, not the cluster's.
    expect(api?.projected?.sources?.[0]?.serviceAccountToken?.audience).toBeUndefined();
    const config = loadConfig(find<V1ConfigMap>("ConfigMap", "chat-config")?.data);
    expect(config.grpc).toMatchObject({
      tokenAudience: "switchboard.dev/chat",
      policyFile: `${GRPC_POLICY_DIR}/policy.json`,
      allowUnauthenticated: false,
    });
  });

  it("renders the roles' and the clients' ServiceAccounts and the clients' grants into the policy file the services read", () => {
    const cm = find<V1ConfigMap>("ConfigMap", "chat-grpc-policy");
    expect(cm?.metadata?.ownerReferences?.[0]).toMatchObject({ uid: "uid-1" });
    const file = cm?.data?.["policy.json"] ?? "";
    expect(JSON.parse(file)).toEqual({
      serviceAccounts: {
        "prod/chat-gateway": "role:gateway",
        "prod/chat-router": "role:router",
        "prod/chat-presence": "role:presence",
        "switchboard-system/switchboard-operator": "operator",
        "billing/billing-api": "client:billing",
      },
      clients: [
        {
          name: "billing",
          permissions: ["publish", "readHistory"],
          sendAs: ["billing-bot"],
          conversations: { all: true },
        },
        { name: "moderation", permissions: ["manageGroups"] },
      ],
    });
    // What the services make of it (their own parser).
    const parsed = parsePolicyFile(file, "policy.json");
    expect(parsed.accounts.get("switchboard-system/switchboard-operator")).toBe("operator");
    expect([...(parsed.policy.clients.get("moderation")?.permissions ?? [])]).toEqual(["manageGroups"]);
  });

  it("changes no Pod when a client is added: the policy file is read again, not the environment", () => {
    const added = desiredObjects(
      {
        ...cluster,
        spec: {
          ...spec,
          api: {
            clients: [
              ...(spec.api?.clients ?? []),
              {
                name: "support",
                permissions: ["presence"],
                certificate: { uri: "switchboard://client:support" },
              },
            ],
          },
        },
      },
      { gatewayReplicas: 2, operatorAccount },
    );
    for (const c of COMPONENTS) expect(podSpec(c, added), c).toEqual(podSpec(c));
    expect(find<V1ConfigMap>("ConfigMap", "chat-grpc-policy", added)?.data?.["policy.json"]).toContain(
      "support",
    );
    expect(configHash(find<V1ConfigMap>("ConfigMap", "chat-config", added)?.data ?? {})).toBe(
      configHash(find<V1ConfigMap>("ConfigMap", "chat-config")?.data ?? {}),
    );
  });

  it("binds only the serving components' ServiceAccounts to the token-review role, cluster-wide and unowned", () => {
    const binding = desiredTokenReviewBinding(cluster, "switchboard-tokenreview");
    expect(binding.metadata?.name).toBe("switchboard:tokenreview:prod:chat");
    expect(binding.metadata?.ownerReferences).toBeUndefined();
    expect(binding.roleRef).toEqual({
      apiGroup: "rbac.authorization.k8s.io",
      kind: "ClusterRole",
      name: "switchboard-tokenreview",
    });
    expect(binding.subjects).toEqual(
      SERVERS.map((c) => ({ kind: "ServiceAccount", name: `chat-${c}`, namespace: "prod" })).sort(
        (a, b) =>
          COMPONENTS.indexOf(a.name.slice(5) as ComponentName) -
          COMPONENTS.indexOf(b.name.slice(5) as ComponentName),
      ),
    );
  });
});
