/**
 * What the chart ships for monitoring, checked with the real tools (Debian's prometheus package,
 * installed by test/infra/up.sh prometheus):
 *   - every alert of files/alerts.yaml is unit-tested with `promtool test rules` (firing and quiet)
 *     and has its runbook;
 *   - a real Prometheus scrapes a running platform (distributed backend, with traffic) and every
 *     query of every panel of files/dashboard.json returns series.
 */
import { execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadYaml } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, repoRoot, type ServerProcess, startServer } from "../helpers/server.js";
import { ensureServer } from "../infra/servers.js";

const files = join(repoRoot, "charts/switchboard-operator/files");
let tools: { PROMETHEUS: string; PROMTOOL: string };

beforeAll(async () => {
  const env = await ensureServer("prometheus");
  tools = { PROMETHEUS: env.PROMETHEUS!, PROMTOOL: env.PROMTOOL! };
});

function run(cmd: string, args: string[], cwd: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd }, (err, stdout, stderr) => {
      if (err && typeof err.code !== "number") return reject(err);
      resolve({ code: typeof err?.code === "number" ? err.code : 0, output: `${stdout}${stderr}` });
    });
  });
}

interface AlertRule {
  alert: string;
  annotations?: Record<string, string>;
}

describe("alerts", () => {
  const rules = (
    loadYaml(readFileSync(join(files, "alerts.yaml"), "utf8")) as { groups: Array<{ rules: AlertRule[] }> }
  ).groups.flatMap((g) => g.rules);

  it("pass their promtool unit tests", async () => {
    const check = await run(tools.PROMTOOL, ["check", "rules", join(files, "alerts.yaml")], repoRoot);
    expect(check.output).toContain(`SUCCESS: ${rules.length} rules found`);
    const test = await run(
      tools.PROMTOOL,
      ["test", "rules", "alerts.test.yaml"],
      join(repoRoot, "test/monitoring"),
    );
    expect(test.output).toContain("SUCCESS");
    expect(test.code, test.output).toBe(0);
  });

  it("are each tested firing, and each names a runbook that exists", () => {
    const tests = loadYaml(readFileSync(join(repoRoot, "test/monitoring/alerts.test.yaml"), "utf8")) as {
      tests: Array<{ alert_rule_test: Array<{ alertname: string; exp_alerts: unknown[] }> }>;
    };
    const fired = new Set(
      tests.tests.flatMap((t) =>
        t.alert_rule_test.filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname),
      ),
    );
    expect(rules.length).toBeGreaterThan(0);
    for (const rule of rules) {
      expect(fired, `${rule.alert} is never tested firing`).toContain(rule.alert);
      const runbook = rule.annotations?.runbook;
      expect(runbook, `${rule.alert} has no runbook`).toBeDefined();
      expect(existsSync(join(repoRoot, runbook!)), `${runbook} is missing`).toBe(true);
    }
  });
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

interface Panel {
  title: string;
  targets: Array<{ expr: string }>;
}

describe("dashboard", () => {
  let server: ServerProcess;
  let prometheus: ReturnType<typeof spawn> | undefined;
  let promDir: string;
  let promUrl: string;
  let traffic: NodeJS.Timeout | undefined;
  const clients: RawClient[] = [];

  beforeAll(async () => {
    const infra = { ...(await ensureServer("kafka")), ...(await ensureServer("cassandra")) };
    const id = `${Date.now().toString(36)}${process.pid.toString(36)}`;
    server = await startServer({
      args: ["--backend", "distributed"],
      env: {
        ...infra,
        SWITCHBOARD_KAFKA_TOPIC_PREFIX: `dash-${id}.`,
        SWITCHBOARD_KAFKA_PARTITIONS: "3",
        SWITCHBOARD_CASSANDRA_KEYSPACE: `dash_${id}`,
      },
    });
    promDir = mkdtempSync(join(tmpdir(), "switchboard-prometheus-"));
    writeFileSync(
      join(promDir, "prometheus.yml"),
      [
        "global: { scrape_interval: 1s, evaluation_interval: 1s }",
        "scrape_configs:",
        "  - job_name: switchboard",
        `    static_configs: [{ targets: ["127.0.0.1:${server.port}"] }]`,
        "",
      ].join("\n"),
    );
    const port = await freePort();
    promUrl = `http://127.0.0.1:${port}`;
    prometheus = spawn(
      tools.PROMETHEUS,
      [
        `--config.file=${join(promDir, "prometheus.yml")}`,
        `--storage.tsdb.path=${join(promDir, "data")}`,
        `--web.listen-address=127.0.0.1:${port}`,
      ],
      { stdio: "ignore" },
    );
  });
  afterAll(async () => {
    clearInterval(traffic);
    for (const c of clients) c.close();
    prometheus?.kill("SIGTERM");
    await server?.dispose();
    if (promDir) rmSync(promDir, { recursive: true, force: true });
  });

  async function query(expr: string): Promise<unknown[]> {
    const res = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const body = (await res.json()) as { status: string; error?: string; data?: { result: unknown[] } };
    if (body.status !== "success") throw new Error(`${expr}: ${body.error}`);
    return body.data!.result;
  }

  it("every panel's queries return series from a scraped platform", async () => {
    const alice = await RawClient.connect(server.url, {
      token: await devToken(server.dataDir, "dash-alice"),
    });
    const bob = await RawClient.connect(server.url, { token: await devToken(server.dataDir, "dash-bob") });
    clients.push(alice, bob);
    await bob.syncAll();
    // Steady traffic while Prometheus scrapes, and one refused send (a group alice is not in).
    const group = expectCase(
      await bob.request({ case: "createGroup", value: { name: "private", members: [] } }),
      "conversation",
    ).conversation!.id;
    expectCase(
      await alice.request({
        case: "send",
        value: { target: { case: "conversationId", value: group }, clientMsgId: "refused", body: "x" },
      }),
      "error",
    );
    let n = 0;
    traffic = setInterval(() => {
      alice
        .request({
          case: "send",
          value: { target: { case: "toUser", value: "dash-bob" }, clientMsgId: `d${++n}`, body: "tick" },
        })
        .catch(() => undefined);
    }, 100);

    // Until Prometheus has scraped the platform for a while with traffic on.
    const deadline = Date.now() + 60_000;
    for (;;) {
      const scrapes = await query('count_over_time(up{job="switchboard"}[1m])').catch(() => []);
      const count = Number((scrapes[0] as { value?: [number, string] } | undefined)?.value?.[1] ?? 0);
      if (count >= 8) break;
      if (Date.now() > deadline) throw new Error(`Prometheus scraped the platform ${count} times in 60 s`);
      await new Promise((r) => setTimeout(r, 500));
    }

    const dashboard = JSON.parse(readFileSync(join(files, "dashboard.json"), "utf8")) as { panels: Panel[] };
    expect(dashboard.panels.length).toBeGreaterThan(0);
    const empty: string[] = [];
    for (const panel of dashboard.panels)
      for (const target of panel.targets) {
        // Grafana's variables as an "All" selection and a short rate window (1 s scrapes).
        const expr = target.expr
          .replaceAll("$__rate_interval", "10s")
          .replaceAll("$namespace", ".*")
          .replaceAll("$chatcluster", ".*");
        if ((await query(expr)).length === 0) empty.push(`${panel.title}: ${target.expr}`);
      }
    expect(empty).toEqual([]);
  }, 120_000);
});
