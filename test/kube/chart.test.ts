/** The Helm chart: lint, values schema, and its rendered manifests validated by the real API server. */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CHART_DIR, CRD_FILE, helm, kubectl, kubeTools, type Tools } from "./helpers.js";

const NS = `sb-chart-${randomBytes(3).toString("hex")}`;
let tools: Tools;

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
  });

  it("rejects values its schema does not allow, naming the value", async () => {
    const bad = await helm(tools, ["template", "t", CHART_DIR, "--set", "replicaCount=two"]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/replicaCount/);
    const unknown = await helm(tools, ["template", "t", CHART_DIR, "--set", "replicas=2"]);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/additional properties 'replicas' not allowed|replicas/);
  });

  it("renders manifests the API server accepts, with no Pod Security warning in a restricted namespace", async () => {
    const rendered = await helm(tools, ["template", "sb", CHART_DIR, "--namespace", NS, "--include-crds"]);
    expect(rendered.code).toBe(0);
    const kinds = [...rendered.stdout.matchAll(/^kind: (\w+)$/gm)].map((m) => m[1]).sort();
    expect(kinds).toEqual([
      "ClusterRole",
      "ClusterRoleBinding",
      "CustomResourceDefinition",
      "Deployment",
      "PodDisruptionBudget",
      "Role",
      "RoleBinding",
      "Service",
      "ServiceAccount",
    ]);
    const r = await kubectlRaw(
      ["apply", "--dry-run=server", "--server-side", "--force-conflicts", "-n", NS, "-f", "-"],
      rendered.stdout,
    );
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("deployment.apps/sb-switchboard-operator serverside-applied (server dry run)");
  });

  it("ships the CRD of k8s/crd unchanged", () => {
    expect(readFileSync(join(CHART_DIR, "crds", "chatclusters.switchboard.dev.yaml"), "utf8")).toBe(
      readFileSync(CRD_FILE, "utf8"),
    );
  });

  it("grants no wildcard and no write on Secrets", async () => {
    const rendered = await helm(tools, [
      "template",
      "sb",
      CHART_DIR,
      "--namespace",
      NS,
      "--show-only",
      "templates/rbac.yaml",
    ]);
    expect(rendered.code).toBe(0);
    expect(rendered.stdout).not.toContain('"*"');
    const secrets = /resources: \["secrets"\]\n\s+verbs: (\[.*\])/.exec(rendered.stdout);
    expect(secrets?.[1]).toBe('["get"]');
  });
});

async function kubectlRaw(args: string[], input: string) {
  const { run } = await import("./helpers.js");
  return run(tools.KUBECTL, [`--kubeconfig=${tools.KUBECONFIG}`, ...args], { input });
}
