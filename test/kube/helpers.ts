/** Shared helpers of the tests against the real control plane: kubectl, helm, polling. */
import { execFile } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { ensureServer } from "../infra/servers.js";

export const root = join(import.meta.dirname, "..", "..");
export const CRD_FILE = join(root, "k8s", "crd", "chatclusters.switchboard.dev.yaml");
export const CHART_DIR = join(root, "charts", "switchboard-operator");

export interface Tools {
  KUBECONFIG: string;
  KUBECTL: string;
  HELM: string;
}

export async function kubeTools(): Promise<Tools> {
  const kube = await ensureServer("kube");
  const helm = await ensureServer("helm");
  return {
    KUBECONFIG: kube.KUBECONFIG as string,
    KUBECTL: kube.KUBECTL as string,
    HELM: helm.HELM as string,
  };
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command, feeding `input`; never throws for a non-zero exit (the caller asserts). */
export async function run(
  cmd: string,
  args: string[],
  options: { input?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  const child = execFile(cmd, args, {
    encoding: "utf8",
    maxBuffer: 64 * 1024 * 1024,
    env: { ...process.env, ...options.env },
  });
  child.stdin?.end(options.input ?? "");
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d: string) => {
    stdout += d;
  });
  child.stderr?.on("data", (d: string) => {
    stderr += d;
  });
  const [code] = (await once(child, "close")) as [number | null];
  return { code: code ?? -1, stdout, stderr };
}

/** kubectl against the test plane; throws with stderr on failure. */
export async function kubectl(tools: Tools, args: string[], input?: string): Promise<string> {
  const r = await run(
    tools.KUBECTL,
    [`--kubeconfig=${tools.KUBECONFIG}`, ...args],
    input === undefined ? {} : { input },
  );
  if (r.code !== 0) throw new Error(`kubectl ${args.join(" ")} failed (${r.code}): ${r.stderr || r.stdout}`);
  return r.stdout;
}

export async function helm(tools: Tools, args: string[]): Promise<RunResult> {
  return run(tools.HELM, [...args, `--kubeconfig=${tools.KUBECONFIG}`]);
}

export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | false>,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Applies the CRD (shared by every test file: server-side, never deleted) and waits until served. */
export async function installCrd(tools: Tools): Promise<void> {
  await kubectl(tools, ["apply", "--server-side", "--force-conflicts", "-f", CRD_FILE]);
  // Polled rather than `kubectl wait`, which fails at once on a CRD created a moment ago whose
  // status has no conditions yet ("<nil> is of the type <nil>").
  await waitFor("the ChatCluster CRD Established", async () => {
    const established = await kubectl(tools, [
      "get",
      "crd/chatclusters.switchboard.dev",
      "-o",
      'jsonpath={.status.conditions[?(@.type=="Established")].status}',
    ]);
    return established.trim() === "True" || undefined;
  });
}
