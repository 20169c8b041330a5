/**
 * The Helm chart charts/switchboard-operator: lint, values schema, least-privilege RBAC, and its
 * rendered manifests validated by the real API server (server dry run: the Kubernetes schemas,
 * admission and Pod Security in a namespace that enforces the restricted profile). Nothing is
 * installed; the namespace is this file's own.
 */
import { randomBytes } from "node:crypto";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadAllYaml, loadYaml } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CHART_DIR, CRD_FILE, helm, kubectl, kubeTools, run, type Tools } from "./helpers.js";

const NS = `sb-chart-${randomBytes(3).toString("hex")}`;
const RELEASE = "sb";
const FULLNAME = "sb-switchboard-operator";
let tools: Tools;

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [key: string]: unknown;
}

interface PolicyRule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
  resourceNames?: string[];
}

/** Each rule as `group/resource: verbs`, sorted: what a role grants, to compare as a whole. */
function grants(rules: PolicyRule[]): string[] {
  return rules
    .flatMap((r) =>
      r.apiGroups.flatMap((g) => r.resources.map((res) => `${g || "core"}/${res}: ${r.verbs.join(",")}`)),
    )
    .sort();
}

/** The chart's RBAC rendered with one `--set`, against the test plane (its lookups see the cluster). */
const rbacAgainstCluster = (set: string) =>
  helm(tools, [
    "template",
    RELEASE,
    CHART_DIR,
    "--namespace",
    NS,
    "--dry-run=server",
    "--show-only",
    "templates/rbac.yaml",
    "--set",
    set,
  ]);

/** kubectl against the test plane, returning the exit code and output (the caller asserts). */
const kubectlRun = (args: string[], input: string) =>
  run(tools.KUBECTL, [`--kubeconfig=${tools.KUBECONFIG}`, ...args], { input });

/** `helm template` of the chart into NS; throws with helm's message if it fails. */
async function render(...args: string[]): Promise<string> {
  const r = await helm(tools, ["template", RELEASE, CHART_DIR, "--namespace", NS, ...args]);
  if (r.code !== 0) throw new Error(`helm template failed: ${r.stderr}`);
  return r.stdout;
}

/**
 * Parses rendered YAML without kubectl, which knows no kind whose CRD the plane lacks (the Prometheus
 * Operator's).
 */
function parsed(yaml: string): K8sObject[] {
  return (loadAllYaml(yaml) as Array<K8sObject | null>).filter((o): o is K8sObject => !!o);
}

/** Parses rendered YAML into objects (kubectl does the YAML; nothing is sent to the server). */
async function objects(yaml: string): Promise<K8sObject[]> {
  const docs = yaml.split(/^---$/m).filter((d) => /^kind:/m.test(d));
  return Promise.all(
    docs.map(async (doc) =>
      JSON.parse(await kubectl(tools, ["create", "--dry-run=client", "-o", "json", "-f", "-"], doc)),
    ),
  );
}

function only(objs: K8sObject[], kind: string): K8sObject {
  const found = objs.filter((o) => o.kind === kind);
  expect(found.map((o) => o.kind)).toEqual([kind]);
  return found[0]!;
}

beforeAll(async () => {
  tools = await kubeTools();
  await kubectl(tools, ["create", "namespace", NS]);
  await kubectl(tools, [
    "label",
    "namespace",
    NS,
    "pod-security.kubernetes.io/enforce=restricted",
    "pod-security.kubernetes.io/warn=restricted",
  ]);
});

afterAll(async () => {
  if (tools) await kubectl(tools, ["delete", "namespace", NS, "--wait=false"]).catch(() => "");
});

describe("charts/switchboard-operator", () => {
  it("passes helm lint --strict", async () => {
    const r = await helm(tools, ["lint", "--strict", CHART_DIR]);
    expect(r.stderr + r.stdout).toContain("1 chart(s) linted, 0 chart(s) failed");
    expect(r.code).toBe(0);
    const chart = readFileSync(join(CHART_DIR, "Chart.yaml"), "utf8");
    expect(chart).toMatch(/^apiVersion: v2$/m);
    expect(chart).toMatch(/^appVersion: "0\.1\.0"$/m);
    expect(chart).toMatch(/^kubeVersion: ">=1\.30/m);
  });

  it("rejects values its schema does not allow, saying which and why", async () => {
    const bad = await helm(tools, ["template", "t", CHART_DIR, "--set", "replicaCount=two"]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain("at '/replicaCount': got string, want integer");
    const unknown = await helm(tools, ["template", "t", CHART_DIR, "--set", "replicas=2"]);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toContain("additional properties 'replicas' not allowed");
    const policy = await helm(tools, ["template", "t", CHART_DIR, "--set", "image.pullPolicy=Sometimes"]);
    expect(policy.code).not.toBe(0);
    expect(policy.stderr).toContain("/image/pullPolicy");
    // Pinned by digest: pulled by it; a digest of another form is refused.
    const digest = `sha256:${"0123456789abcdef".repeat(4)}`;
    const pinned = await render(
      "--show-only",
      "templates/deployment.yaml",
      "--set",
      `image.digest=${digest}`,
    );
    expect(pinned).toMatch(new RegExp(`image: "[^"]+:[^"@]+@${digest}"`));
    const badDigest = await helm(tools, ["template", "t", CHART_DIR, "--set", "image.digest=sha256:xyz"]);
    expect(badDigest.code).not.toBe(0);
    expect(badDigest.stderr).toContain("/image/digest");
    // A Pod label that would replace the selector's own: the API server would refuse the Deployment.
    const selector = await helm(tools, [
      "template",
      "t",
      CHART_DIR,
      "--set",
      "podLabels.app\\.kubernetes\\.io/name=x",
    ]);
    expect(selector.code).not.toBe(0);
    expect(selector.stderr).toContain("invalid propertyName 'app.kubernetes.io/name'");
    // Names and references the API server or the runtime would refuse, and a count past any use.
    for (const set of [
      "serviceAccount.name=Bad_Name",
      "image.tag=bad tag",
      "image.repository=Bad/Repo",
      "replicaCount=1000000",
    ]) {
      const refused = await helm(tools, ["template", "t", CHART_DIR, "--set", set]);
      expect(refused.code, set).not.toBe(0);
      expect(refused.stderr, set).toContain(`/${set.split("=")[0]!.replaceAll(".", "/")}`);
    }
    const extra = await helm(tools, ["template", "t", CHART_DIR, "--set", "podLabels.team=chat"]);
    expect(extra.stderr).toBe("");
    expect(extra.code).toBe(0);
  });

  it("refuses a poll interval under 100ms (a tight reconcile loop) and resource quantities Kubernetes would not take", async () => {
    const template = (...set: string[]) =>
      helm(tools, ["template", "t", CHART_DIR, ...set.flatMap((v) => ["--set-string", v])]);
    for (const bad of ["0s", "0ms", "0.0s", "99ms", "0.05s", "10", "ten", "-1s"]) {
      const r = await template(`pollInterval=${bad}`);
      expect(r.code, bad).not.toBe(0);
      expect(r.stderr, bad).toContain("/pollInterval");
    }
    for (const good of ["100ms", "0.1s", "500ms", "1s", "1.5s", "10s", "300s"]) {
      const r = await template(`pollInterval=${good}`);
      expect(r.stderr, good).toBe("");
      expect(r.code, good).toBe(0);
    }
    for (const bad of [
      "resources.requests.cpu=lots",
      "resources.limits.memory=1 GB",
      "resources.requests.memory=-1Gi",
    ]) {
      const r = await template(bad);
      expect(r.code, bad).not.toBe(0);
      expect(r.stderr, bad).toMatch(/\/resources\/(requests|limits)\//);
    }
    const quantities = await template("resources.requests.cpu=250m", "resources.limits.memory=1.5Gi");
    expect(quantities.stderr).toBe("");
    const numeric = await helm(tools, ["template", "t", CHART_DIR, "--set", "resources.requests.cpu=2"]);
    expect(numeric.code).toBe(0);
  });

  it("points NOTES at the metrics Service only when there is one, and says to delete ChatClusters before uninstalling", async () => {
    const notes = async (...args: string[]) => {
      const r = await helm(tools, [
        "install",
        RELEASE,
        CHART_DIR,
        "--namespace",
        NS,
        "--dry-run=client",
        ...args,
      ]);
      expect(r.code, r.stderr).toBe(0);
      return r.stdout.slice(r.stdout.indexOf("NOTES:"));
    };
    const withService = await notes();
    expect(withService).toContain(`kubectl port-forward -n ${NS} svc/${FULLNAME}-metrics 8081`);
    const without = await notes("--set", "metrics.service.enabled=false");
    expect(without).not.toContain(`svc/${FULLNAME}-metrics`);
    expect(without).toContain(`kubectl port-forward -n ${NS} deploy/${FULLNAME} 8081`);
    for (const text of [withService, without]) {
      expect(text).toContain("Before `helm uninstall`, delete the ChatClusters");
      expect(text).toContain("switchboard.dev/cleanup");
    }
  });

  it("renders manifests the API server accepts, with no Pod Security warning in a restricted namespace", async () => {
    const rendered = await render("--include-crds");
    const kinds = (await objects(rendered)).map((o) => o.kind).sort();
    expect(kinds).toEqual([
      "ClusterRole",
      "ClusterRole",
      "ClusterRoleBinding",
      "CustomResourceDefinition",
      "Deployment",
      "PodDisruptionBudget",
      "Role",
      "Role",
      "RoleBinding",
      "RoleBinding",
      "Service",
      "ServiceAccount",
      "ValidatingAdmissionPolicy",
      "ValidatingAdmissionPolicyBinding",
    ]);
    const r = await kubectlRun(
      ["apply", "--dry-run=server", "--server-side", "--force-conflicts", "-n", NS, "-f", "-"],
      rendered,
    );
    expect(r.stderr).toBe(""); // no warning: the namespace warns on anything short of restricted
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`deployment.apps/${FULLNAME} serverside-applied (server dry run)`);
    expect(r.stdout).toContain(`customresourcedefinition.apiextensions.k8s.io/chatclusters.switchboard.dev`);

    // Other values render valid objects too: one replica (no PodDisruptionBudget), scheduling, no
    // metrics Service, a named ServiceAccount with annotations.
    const custom = await render(
      "--set",
      "replicaCount=1",
      "--set",
      "metrics.service.enabled=false",
      "--set",
      "serviceAccount.name=sb-operator",
      "--set",
      "serviceAccount.annotations.example\\.com/role=operator",
      "--set",
      "nodeSelector.pool=system",
      "--set",
      "tolerations[0].key=system,tolerations[0].operator=Exists,tolerations[0].effect=NoSchedule",
      "--set",
      "priorityClassName=system-cluster-critical",
      "--set",
      "imagePullSecrets[0].name=pull",
      "--set",
      "image.tag=0.1.1",
    );
    const customObjs = await objects(custom);
    expect(customObjs.map((o) => o.kind).sort()).toEqual([
      "ClusterRole",
      "ClusterRole",
      "ClusterRoleBinding",
      "Deployment",
      "Role",
      "Role",
      "RoleBinding",
      "RoleBinding",
      "ServiceAccount",
      "ValidatingAdmissionPolicy",
      "ValidatingAdmissionPolicyBinding",
    ]);
    const pod = podSpec(only(customObjs, "Deployment"));
    expect(pod.serviceAccountName).toBe("sb-operator");
    expect(pod.nodeSelector).toEqual({ pool: "system" });
    expect(pod.containers[0]!.image).toBe("ghcr.io/switchboard-chat/switchboard:0.1.1");
    const r2 = await kubectlRun(["apply", "--dry-run=server", "-n", NS, "-f", "-"], custom);
    expect(r2.stderr).toBe("");
    expect(r2.code).toBe(0);
  });

  it("runs the operator as a restricted Pod: the namespace's enforcing admission accepts its Pod spec", async () => {
    const deployment = only(await objects(await render()), "Deployment");
    const spec = podSpec(deployment);
    const c = spec.containers[0]!;
    expect(deployment.spec).toMatchObject({ replicas: 2 });
    expect(c.args).toEqual([
      "operator",
      "--http-port",
      "8081",
      "--workers",
      "2",
      "--poll-interval",
      "10s",
      "--lease-name",
      FULLNAME,
      // Its gRPC identity toward gateways, and the role the ChatClusters' serving Pods are bound to.
      "--service-account",
      `$(POD_NAMESPACE)/${FULLNAME}`,
      "--token-review-cluster-role",
      `${FULLNAME}-tokenreview`,
    ]);
    expect(c.env).toEqual([
      { name: "POD_NAME", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } },
      { name: "POD_NAMESPACE", valueFrom: { fieldRef: { fieldPath: "metadata.namespace" } } },
      { name: "SWITCHBOARD_LOG_LEVEL", value: "info" },
    ]);
    expect(c.ports).toEqual([{ name: "http", containerPort: 8081, protocol: "TCP" }]);
    expect(c.livenessProbe).toMatchObject({ httpGet: { path: "/healthz", port: "http" } });
    expect(c.readinessProbe).toMatchObject({ httpGet: { path: "/readyz", port: "http" } });
    expect(c.resources).toMatchObject({
      requests: { cpu: "50m", memory: "96Mi" },
      limits: { memory: "256Mi" },
    });
    expect(spec.automountServiceAccountToken).toBe(true);
    // Replicas spread over nodes, softly (one node still runs them all).
    expect(spec.topologySpreadConstraints).toEqual([
      {
        maxSkew: 1,
        topologyKey: "kubernetes.io/hostname",
        whenUnsatisfiable: "ScheduleAnyway",
        labelSelector: {
          matchLabels: {
            "app.kubernetes.io/name": "switchboard-operator",
            "app.kubernetes.io/instance": RELEASE,
          },
        },
      },
    ]);
    const zones = podSpec(
      only(
        await objects(
          await render(
            "--set",
            "topologySpreadConstraints[0].maxSkew=1,topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone,topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
          ),
        ),
        "Deployment",
      ),
    );
    expect(zones.topologySpreadConstraints).toEqual([
      { maxSkew: 1, topologyKey: "topology.kubernetes.io/zone", whenUnsatisfiable: "DoNotSchedule" },
    ]);
    // Its budget lets a drain evict a replica that is not ready (it protects nothing).
    const pdb = only(await objects(await render("--show-only", "templates/pdb.yaml")), "PodDisruptionBudget");
    expect(pdb.spec).toMatchObject({ minAvailable: 1, unhealthyPodEvictionPolicy: "AlwaysAllow" });
    expect(spec.securityContext).toMatchObject({
      runAsNonRoot: true,
      runAsUser: 65532,
      seccompProfile: { type: "RuntimeDefault" },
    });
    expect(c.securityContext).toEqual({
      runAsNonRoot: true,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    });

    // PodSecurity only warns about a Deployment's template; it enforces on Pods. So create the
    // template as a Pod (dry run) in the enforcing namespace, next to the chart's ServiceAccount
    // (created for real: ServiceAccount admission looks it up)...
    await kubectl(tools, ["apply", "-f", "-"], await render("--show-only", "templates/serviceaccount.yaml"));
    const pod = (template: { spec: PodSpec }, name: string) =>
      JSON.stringify({
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name, namespace: NS },
        spec: template.spec,
      });
    const podTemplate = (deployment.spec as { template: { spec: PodSpec } }).template;
    const ok = await kubectlRun(["create", "--dry-run=server", "-f", "-"], pod(podTemplate, "operator"));
    expect(ok.stderr).toBe("");
    expect(ok.code).toBe(0);
    // ...and check that the namespace does enforce: the same Pod without its securityContexts is refused.
    const { securityContext: _pod, ...loose } = podTemplate.spec;
    const looseContainers = loose.containers.map(({ securityContext: _c, ...rest }) => rest);
    const refused = await kubectlRun(
      ["create", "--dry-run=server", "-f", "-"],
      pod({ spec: { ...loose, containers: looseContainers } }, "loose"),
    );
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('violates PodSecurity "restricted:latest"');
  });

  it("ships the CRD of k8s/crd unchanged", () => {
    expect(readFileSync(join(CHART_DIR, "crds", "chatclusters.switchboard.dev.yaml"), "utf8")).toBe(
      readFileSync(CRD_FILE, "utf8"),
    );
  });

  it("grants least privilege: exactly these rules, no wildcard, Secrets read-only", async () => {
    const objs = await objects(await render("--show-only", "templates/rbac.yaml"));
    const byName = (kind: string, name: string) => {
      const found = objs.filter((o) => o.kind === kind && o.metadata.name === name);
      expect(found).toHaveLength(1);
      return found[0] as K8sObject & { rules: PolicyRule[] };
    };
    const clusterRole = byName("ClusterRole", FULLNAME);
    // The owned kinds the operator applies (patch; create when new) and prunes (list, delete).
    const applied = "list,create,patch,delete";
    const watched = "list,watch,create,patch,delete";
    // Exactly the calls of operator/ (server-side apply and JSON/merge patches are PATCH; informers
    // list and watch; only the Lease is ever replaced, so no `update` here but the finalizers one).
    expect(grants(clusterRole.rules)).toEqual(
      [
        // Informer (list, watch), read each reconcile (get), finalizer (JSON patch).
        "switchboard.dev/chatclusters: get,list,watch,patch",
        // Status by server-side apply.
        "switchboard.dev/chatclusters/status: patch",
        // blockOwnerDeletion under OwnerReferencesPermissionEnforcement.
        "switchboard.dev/chatclusters/finalizers: update",
        // Informers on the workloads; the gateway Deployment is read by name (its replicas).
        "apps/deployments: get,list,watch,create,patch,delete",
        "apps/statefulsets: list,watch,create,patch,delete",
        // Every owned kind is watched (an object deleted by hand is restored at once); a Service
        // whose clusterIP must change is read, deleted and created again.
        "core/services: get,list,watch,create,patch,delete",
        `core/configmaps: ${watched}`,
        `core/serviceaccounts: ${watched}`,
        `policy/poddisruptionbudgets: ${watched}`,
        `networking.k8s.io/networkpolicies: ${watched}`,
        // Gateway Pods: listed and watched, drain annotations by merge patch, a drained one that
        // outlived its scale-down deleted.
        "core/pods: list,watch,patch,delete",
        "core/secrets: get",
        "events.k8s.io/events: create",
        // The PodMonitor a ChatCluster may ask for: applied (patch, create when new), pruned (list,
        // delete); discovery of the kind needs no rule.
        `monitoring.coreos.com/podmonitors: ${applied}`,
        // The cert-manager Certificates of spec.grpc.tls.issuerRef: likewise applied and pruned.
        `cert-manager.io/certificates: ${applied}`,
        // Each ChatCluster's token-review binding (cluster-scoped: applied, deleted by the
        // finalizer), to the token-review role only (bind on that one name).
        "rbac.authorization.k8s.io/clusterrolebindings: create,patch,delete",
        "rbac.authorization.k8s.io/clusterroles: bind",
      ].sort(),
    );
    expect(clusterRole.rules.find((r) => r.verbs.includes("bind"))?.resourceNames).toEqual([
      `${FULLNAME}-tokenreview`,
    ]);
    // What the ChatClusters' serving components may do with their API token: review tokens, only.
    expect(grants(byName("ClusterRole", `${FULLNAME}-tokenreview`).rules)).toEqual([
      "authentication.k8s.io/tokenreviews: create",
    ]);
    // The operator's own tokens (TokenRequest), for its own ServiceAccount only.
    const ownToken = byName("Role", `${FULLNAME}-own-token`);
    expect(ownToken.metadata.namespace).toBe(NS);
    expect(grants(ownToken.rules)).toEqual(["core/serviceaccounts/token: create"]);
    expect(ownToken.rules[0]?.resourceNames).toEqual([FULLNAME]);
    for (const rule of clusterRole.rules) {
      expect([...rule.apiGroups, ...rule.resources, ...rule.verbs]).not.toContain("*");
    }
    // Leader election: Leases in the release namespace only, bound to the operator's ServiceAccount.
    const role = byName("Role", `${FULLNAME}-leader-election`);
    expect(role.metadata.namespace).toBe(NS);
    expect(grants(role.rules)).toEqual([
      "coordination.k8s.io/leases: create",
      "coordination.k8s.io/leases: get,update",
    ]);
    // Reading and renewing only its own Lease, the one --lease-name names.
    expect(role.rules.find((r) => r.verbs.includes("update"))?.resourceNames).toEqual([FULLNAME]);
    expect(role.rules.find((r) => r.verbs.includes("create"))?.resourceNames).toBeUndefined();
    for (const kind of ["ClusterRoleBinding", "RoleBinding"])
      for (const binding of objs.filter((o) => o.kind === kind) as Array<K8sObject & { subjects: unknown[] }>)
        expect(binding.subjects).toEqual([{ kind: "ServiceAccount", name: FULLNAME, namespace: NS }]);
    // What RBAC cannot narrow (the bindings' names are per ChatCluster; a delete is not an
    // escalation), an admission policy does: the operator's ServiceAccount, and it alone, may create,
    // change and delete only the switchboard:tokenreview:* bindings, and bind only the token-review role.
    const vap = byName("ValidatingAdmissionPolicy", `${FULLNAME}-clusterrolebindings`) as unknown as {
      spec: {
        failurePolicy: string;
        matchConstraints: { resourceRules: Array<{ resources: string[]; operations: string[] }> };
        matchConditions: Array<{ expression: string }>;
        validations: Array<{ expression: string }>;
      };
    };
    expect(vap.spec.failurePolicy).toBe("Fail");
    expect(vap.spec.matchConstraints.resourceRules).toEqual([
      expect.objectContaining({
        resources: ["clusterrolebindings"],
        operations: ["CREATE", "UPDATE", "DELETE"],
      }),
    ]);
    expect(vap.spec.matchConditions.map((c) => c.expression)).toEqual([
      `request.userInfo.username == "system:serviceaccount:${NS}:${FULLNAME}"`,
    ]);
    expect(vap.spec.validations.map((v) => v.expression).join("\n")).toContain(
      'startsWith("switchboard:tokenreview:")',
    );
    expect(vap.spec.validations.map((v) => v.expression).join("\n")).toContain(`"${FULLNAME}-tokenreview"`);
    expect(byName("ValidatingAdmissionPolicyBinding", `${FULLNAME}-clusterrolebindings`).spec).toEqual({
      policyName: `${FULLNAME}-clusterrolebindings`,
      validationActions: ["Deny"],
    });
    // rbac.secretNamespaces: Secrets readable in those namespaces only (a Role each), not cluster-wide.
    const scoped = await objects(
      await render(
        "--show-only",
        "templates/rbac.yaml",
        "--set",
        "rbac.secretNamespaces={chat,chat-staging}",
        "--set",
        "rbac.clusterRoleBindingPolicy.enabled=false",
      ),
    );
    const scopedRole = scoped.find(
      (o) => o.kind === "ClusterRole" && o.metadata.name === FULLNAME,
    ) as K8sObject & {
      rules: PolicyRule[];
    };
    expect(grants(scopedRole.rules)).not.toContain("core/secrets: get");
    expect(grants(scopedRole.rules)).toHaveLength(grants(clusterRole.rules).length - 1);
    const secretRoles = scoped.filter((o) => o.kind === "Role" && o.metadata.name === `${FULLNAME}-secrets`);
    expect(secretRoles.map((o) => o.metadata.namespace)).toEqual(["chat", "chat-staging"]);
    for (const role of secretRoles as Array<K8sObject & { rules: PolicyRule[] }>)
      expect(grants(role.rules)).toEqual(["core/secrets: get"]);
    const secretBindings = scoped.filter(
      (o) => o.kind === "RoleBinding" && o.metadata.name === `${FULLNAME}-secrets`,
    );
    expect(secretBindings.map((o) => o.metadata.namespace)).toEqual(["chat", "chat-staging"]);
    expect(scoped.map((o) => o.kind)).not.toContain("ValidatingAdmissionPolicy");
    // Against a cluster, a namespace that does not exist is refused before anything is applied (a
    // release that failed there would have dropped the cluster-wide rule and bound nothing).
    const against = (namespaces: string) => rbacAgainstCluster(`rbac.secretNamespaces={${namespaces}}`);
    const missing = `sb-no-such-${randomBytes(3).toString("hex")}`;
    const refused = await against(`default,${missing}`);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain(`rbac.secretNamespaces: namespace "${missing}" does not exist`);
    // The release's own namespace may not exist yet (`--create-namespace` makes it after rendering).
    const existing = await against(`default,kube-public,${NS}`);
    expect(existing.stderr).toBe("");
    expect(existing.code).toBe(0);
    // The rendered RBAC is valid for the API server.
    const r = await kubectlRun(
      ["apply", "--dry-run=server", "-f", "-"],
      await render("--show-only", "templates/rbac.yaml"),
    );
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
  });

  it("watchNamespaces: every namespaced right in a Role of each listed namespace, only cluster-scoped ones cluster-wide", async () => {
    const roleOf = (objs: K8sObject[], kind: string, name: string, namespace?: string) =>
      objs.filter(
        (o) => o.kind === kind && o.metadata.name === name && o.metadata.namespace === namespace,
      ) as Array<K8sObject & { rules: PolicyRule[] }>;
    const everywhere = await objects(await render("--show-only", "templates/rbac.yaml"));
    const allRules = grants(roleOf(everywhere, "ClusterRole", FULLNAME)[0]!.rules);
    const confined = await objects(
      await render("--show-only", "templates/rbac.yaml", "--set", "watchNamespaces={chat,chat-staging}"),
    );
    // Cluster-wide, only what no namespace holds: each ChatCluster's token-review binding.
    const clusterScoped = [
      "rbac.authorization.k8s.io/clusterrolebindings: create,patch,delete",
      "rbac.authorization.k8s.io/clusterroles: bind",
    ];
    expect(grants(roleOf(confined, "ClusterRole", FULLNAME)[0]!.rules)).toEqual(clusterScoped);
    // In each listed namespace, everything else the operator holds everywhere without the value.
    for (const namespace of ["chat", "chat-staging"]) {
      const [role] = roleOf(confined, "Role", FULLNAME, namespace);
      expect(grants(role!.rules)).toEqual(allRules.filter((g) => !clusterScoped.includes(g)));
      const [binding] = roleOf(confined, "RoleBinding", FULLNAME, namespace) as unknown as Array<{
        roleRef: unknown;
        subjects: unknown;
      }>;
      expect(binding!.roleRef).toEqual({
        apiGroup: "rbac.authorization.k8s.io",
        kind: "Role",
        name: FULLNAME,
      });
      expect(binding!.subjects).toEqual([{ kind: "ServiceAccount", name: FULLNAME, namespace: NS }]);
    }
    expect(confined.filter((o) => o.kind === "Role" && o.metadata.name === FULLNAME)).toHaveLength(2);
    // With rbac.secretNamespaces too, Secrets are read there alone, not in the watched namespaces.
    const both = await objects(
      await render(
        "--show-only",
        "templates/rbac.yaml",
        "--set",
        "watchNamespaces={chat}",
        "--set",
        "rbac.secretNamespaces={vault}",
      ),
    );
    expect(grants(roleOf(both, "Role", FULLNAME, "chat")[0]!.rules)).not.toContain("core/secrets: get");
    expect(grants(roleOf(both, "Role", `${FULLNAME}-secrets`, "vault")[0]!.rules)).toEqual([
      "core/secrets: get",
    ]);
    // The operator is told which namespaces are its own.
    const deployment = (await objects(
      await render(
        "--show-only",
        "templates/deployment.yaml",
        "--set",
        "watchNamespaces={chat,chat-staging}",
      ),
    )) as unknown as Array<{ spec: { template: { spec: { containers: Container[] } } } }>;
    const args = deployment[0]!.spec.template.spec.containers[0]!.args;
    expect(args.slice(args.indexOf("--watch-namespaces"))).toEqual([
      "--watch-namespaces",
      "chat,chat-staging",
    ]);
    const unwatched = await objects(await render("--show-only", "templates/deployment.yaml"));
    expect(JSON.stringify(unwatched)).not.toContain("--watch-namespaces");
    // A name no namespace can have, and a namespace missing on the cluster, are refused.
    const bad = await helm(tools, ["template", "t", CHART_DIR, "--set", "watchNamespaces={Chat}"]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain("/watchNamespaces/0");
    const missing = `sb-no-such-${randomBytes(3).toString("hex")}`;
    const refused = await rbacAgainstCluster(`watchNamespaces={default,${missing}}`);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain(`watchNamespaces: namespace "${missing}" does not exist`);
    // Valid for the API server.
    const applied = await kubectlRun(
      ["apply", "--dry-run=server", "-f", "-"],
      await render("--show-only", "templates/rbac.yaml", "--set", "watchNamespaces={default,kube-public}"),
    );
    expect(applied.stderr).toBe("");
    expect(applied.code).toBe(0);
  });
});

interface Container {
  image: string;
  args: string[];
  env: unknown[];
  ports: unknown[];
  livenessProbe: unknown;
  readinessProbe: unknown;
  resources: unknown;
  securityContext?: unknown;
}

interface PodSpec {
  serviceAccountName: string;
  automountServiceAccountToken: boolean;
  securityContext?: unknown;
  nodeSelector?: Record<string, string>;
  topologySpreadConstraints?: unknown[];
  containers: Container[];
}

function podSpec(deployment: K8sObject): PodSpec {
  return (deployment.spec as { template: { spec: PodSpec } }).template.spec;
}

describe("charts/switchboard-operator monitoring objects (only when asked)", () => {
  const FILES = join(CHART_DIR, "files");
  const MONITORING_FLAGS = [
    ["metrics.serviceMonitor.enabled", "ServiceMonitor"],
    ["monitoring.prometheusRule.enabled", "PrometheusRule"],
    ["monitoring.grafanaDashboard.enabled", "ConfigMap"],
  ] as const;
  const dataOf = (o: K8sObject) => o.data as Record<string, string>;
  const specOf = <T>(o: K8sObject) => o.spec as T;

  it("renders none of the ServiceMonitor, PrometheusRule and dashboard ConfigMap by default, and each alone when its toggle is on", async () => {
    const base = parsed(await render()).map((o) => o.kind);
    for (const kind of ["ServiceMonitor", "PrometheusRule", "ConfigMap"]) expect(base).not.toContain(kind);
    for (const [flag, kind] of MONITORING_FLAGS) {
      const kinds = parsed(await render("--set", `${flag}=true`)).map((o) => o.kind);
      expect(kinds.sort(), flag).toEqual([...base, kind].sort());
    }
    // The chart passes lint with everything on, too.
    const lint = await helm(tools, [
      "lint",
      "--strict",
      CHART_DIR,
      ...MONITORING_FLAGS.flatMap(([flag]) => ["--set", `${flag}=true`]),
    ]);
    expect(lint.stderr + lint.stdout).toContain("1 chart(s) linted, 0 chart(s) failed");
    expect(lint.code).toBe(0);
  });

  it("points the ServiceMonitor at the operator's metrics Service, with the labels and interval given", async () => {
    const objs = parsed(
      await render(
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
        "--set",
        "metrics.serviceMonitor.interval=30s",
        "--set",
        "metrics.serviceMonitor.scrapeTimeout=10s",
      ),
    );
    const sm = only(objs, "ServiceMonitor");
    expect(sm.apiVersion).toBe("monitoring.coreos.com/v1");
    expect(sm.metadata.namespace).toBe(NS);
    expect(sm.metadata.labels).toMatchObject({
      release: "kube-prometheus-stack",
      "app.kubernetes.io/name": "switchboard-operator",
      "app.kubernetes.io/instance": RELEASE,
    });
    const spec = specOf<{
      selector: { matchLabels: Record<string, string> };
      namespaceSelector: unknown;
      endpoints: unknown[];
    }>(sm);
    expect(spec.namespaceSelector).toEqual({ matchNames: [NS] });
    expect(spec.endpoints).toEqual([
      { port: "http", path: "/metrics", interval: "30s", scrapeTimeout: "10s" },
    ]);
    // Its selector matches the metrics Service, and no other Service of the chart; the port is the
    // Service's, by name.
    const services = objs.filter(
      (o) =>
        o.kind === "Service" &&
        Object.entries(spec.selector.matchLabels).every(([k, v]) => o.metadata.labels?.[k] === v),
    );
    expect(services.map((o) => o.metadata.name)).toEqual([`${FULLNAME}-metrics`]);
    expect(specOf<{ ports: Array<{ name: string }> }>(services[0]!).ports.map((p) => p.name)).toEqual([
      "http",
    ]);

    // Without an interval, the Prometheus' own applies; without the Service there is nothing to scrape.
    const plain = only(
      parsed(await render("--set", "metrics.serviceMonitor.enabled=true")),
      "ServiceMonitor",
    );
    expect(specOf<{ endpoints: unknown[] }>(plain).endpoints).toEqual([{ port: "http", path: "/metrics" }]);
    const noService = await helm(tools, [
      "template",
      RELEASE,
      CHART_DIR,
      "--set",
      "metrics.serviceMonitor.enabled=true",
      "--set",
      "metrics.service.enabled=false",
    ]);
    expect(noService.code).not.toBe(0);
    expect(noService.stderr).toContain("metrics.serviceMonitor.enabled needs metrics.service.enabled");
  });

  it("puts the groups of files/alerts.yaml into the PrometheusRule, with the labels given", async () => {
    const rule = only(
      parsed(
        await render(
          "--set",
          "monitoring.prometheusRule.enabled=true",
          "--set",
          "monitoring.prometheusRule.labels.release=kube-prometheus-stack",
        ),
      ),
      "PrometheusRule",
    );
    expect(rule.apiVersion).toBe("monitoring.coreos.com/v1");
    expect(rule.metadata.namespace).toBe(NS);
    expect(rule.metadata.labels).toMatchObject({
      release: "kube-prometheus-stack",
      "app.kubernetes.io/instance": RELEASE,
    });
    const alerts = loadYaml<{ groups: unknown[] }>(readFileSync(join(FILES, "alerts.yaml"), "utf8"));
    expect(Array.isArray(alerts.groups)).toBe(true);
    expect(specOf<{ groups: unknown[] }>(rule)).toEqual({ groups: alerts.groups });
  });

  it("ships files/dashboard.json verbatim in a ConfigMap labelled for Grafana's sidecar, which the API server keeps as it is", async () => {
    const json = readFileSync(join(FILES, "dashboard.json"), "utf8");
    const rendered = await render(
      "--set",
      "monitoring.grafanaDashboard.enabled=true",
      "--show-only",
      "templates/grafana-dashboard.yaml",
    );
    const cm = only(parsed(rendered), "ConfigMap");
    expect(cm.metadata.name).toBe(`${FULLNAME}-dashboard`);
    expect(cm.metadata.namespace).toBe(NS);
    expect(cm.metadata.labels).toMatchObject({
      grafana_dashboard: "1",
      "app.kubernetes.io/instance": RELEASE,
    });
    expect(dataOf(cm)).toEqual({ "switchboard.json": json });
    expect(JSON.parse(dataOf(cm)["switchboard.json"]!)).toBeTypeOf("object");
    // The API server accepts it and stores the same bytes (server dry run).
    const stored = JSON.parse(
      await kubectl(tools, ["create", "--dry-run=server", "-o", "json", "-f", "-"], rendered),
    ) as K8sObject;
    expect(dataOf(stored)["switchboard.json"]).toBe(json);

    // The sidecar's label, its value, a folder annotation and the namespace are the installer's.
    const custom = only(
      parsed(
        await render(
          "--set",
          "monitoring.grafanaDashboard.enabled=true",
          "--set",
          "monitoring.grafanaDashboard.label=example.com/dashboard",
          "--set-string",
          "monitoring.grafanaDashboard.labelValue=switchboard",
          "--set",
          "monitoring.grafanaDashboard.annotations.grafana_folder=Chat",
          "--set",
          "monitoring.grafanaDashboard.namespace=grafana",
        ),
      ),
      "ConfigMap",
    );
    expect(custom.metadata.namespace).toBe("grafana");
    expect(custom.metadata.labels?.["example.com/dashboard"]).toBe("switchboard");
    expect(custom.metadata.labels).not.toHaveProperty("grafana_dashboard");
    expect((custom.metadata as { annotations?: unknown }).annotations).toEqual({ grafana_folder: "Chat" });
  });

  it("renders any valid alerts and dashboard files unchanged, and refuses an alerts file that is not a rules file", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sb-chart-files-"));
    try {
      const chart = join(dir, "switchboard-operator");
      cpSync(CHART_DIR, chart, { recursive: true });
      // Comments, a document marker, Prometheus templates, multi-line and folded strings, numbers,
      // quoted label values, non-ASCII text.
      const alerts = [
        "# a rules file as promtool reads it",
        "---",
        "groups:",
        "  - name: awkward",
        "    interval: 30s",
        "    limit: 10",
        "    rules:",
        "      - alert: Templated",
        "        expr: |",
        '          sum by (pod) (rate(x_total{code=~"5..|UNAVAILABLE"}[5m]))',
        "            > 0.5",
        "        for: 5m",
        "        labels:",
        '          severity: "critical"',
        "          team: '1'",
        "        annotations:",
        '          summary: "{{ $labels.pod }} at {{ $value | humanizePercentage }} → ünïcödé"',
        "          description: >-",
        "            folded",
        "            text: with a colon",
        "      - record: job:x:rate5m",
        "        expr: sum(rate(x_total[5m]))",
        "",
      ].join("\n");
      // HTML-ish characters, Grafana templates, escapes, non-ASCII, CRLF line ends and no final newline.
      const dashboard =
        '{\r\n\t"title": "Switch<board> & \\"co\\" \\\\ \\u00e9 → 😀",\r\n\t"panels": [{"legendFormat": "{{pod}} $datasource"}]\r\n}';
      writeFileSync(join(chart, "files", "alerts.yaml"), alerts);
      writeFileSync(join(chart, "files", "dashboard.json"), dashboard);
      const r = await helm(tools, [
        "template",
        RELEASE,
        chart,
        "--namespace",
        NS,
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.grafanaDashboard.enabled=true",
      ]);
      expect(r.stderr).toBe("");
      const objs = parsed(r.stdout);
      const groups = specOf<{ groups: unknown[] }>(only(objs, "PrometheusRule")).groups;
      expect(groups).toEqual(loadYaml<{ groups: unknown[] }>(alerts).groups);
      expect(groups).toEqual([
        expect.objectContaining({
          name: "awkward",
          limit: 10,
          rules: [
            expect.objectContaining({
              expr: 'sum by (pod) (rate(x_total{code=~"5..|UNAVAILABLE"}[5m]))\n  > 0.5\n',
              labels: { severity: "critical", team: "1" },
              annotations: {
                summary: "{{ $labels.pod }} at {{ $value | humanizePercentage }} → ünïcödé",
                description: "folded text: with a colon",
              },
            }),
            { record: "job:x:rate5m", expr: "sum(rate(x_total[5m]))" },
          ],
        }),
      ]);
      const data = dataOf(only(objs, "ConfigMap"))["switchboard.json"]!;
      expect(data).toBe(dashboard);
      expect(JSON.parse(data).title).toBe('Switch<board> & "co" \\ é → 😀');

      for (const [content, message] of [
        ["groups: [\n", "files/alerts.yaml is not valid YAML"],
        ["rules: []\n", "files/alerts.yaml must be a Prometheus rules file"],
      ] as const) {
        writeFileSync(join(chart, "files", "alerts.yaml"), content);
        const bad = await helm(tools, [
          "template",
          RELEASE,
          chart,
          "--set",
          "monitoring.prometheusRule.enabled=true",
        ]);
        expect(bad.code, content).not.toBe(0);
        expect(bad.stderr).toContain(message);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("rejects monitoring values its schema does not know, and durations Prometheus would not", async () => {
    const cases = [
      [
        ["--set", "monitoring.serviceMonitor.enabled=true"],
        "additional properties 'serviceMonitor' not allowed",
      ],
      [["--set", "metrics.serviceMonitor.interval=30 seconds"], "/metrics/serviceMonitor/interval"],
      [["--set", "monitoring.prometheusRule.enabled=yes please"], "/monitoring/prometheusRule/enabled"],
      [["--set", "monitoring.grafanaDashboard.label=not a label"], "/monitoring/grafanaDashboard/label"],
    ] as const;
    for (const [args, message] of cases) {
      const r = await helm(tools, ["template", "t", CHART_DIR, ...args]);
      expect(r.code, args.join(" ")).not.toBe(0);
      expect(r.stderr).toContain(message);
    }
  });
});
