/** The cluster bench's per-process CPU profile (cpu-profile-preload.ts), loaded as node's --import. */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { afterEach, describe, expect, it } from "vitest";

const preload = pathToFileURL(resolve("dist/bench/cpu-profile-preload.js")).href;
let dir: string;
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const run = (args: string[]) => {
  dir = mkdtempSync(join(tmpdir(), "sb-cpuprof-"));
  const r = spawnSync(process.execPath, ["-e", "let x = 0; for (let i = 0; i < 3e6; i++) x += i;", ...args], {
    env: {
      ...process.env,
      NODE_OPTIONS: `--import=${preload}`,
      SWITCHBOARD_BENCH_CPU_PROF_DIR: dir,
      SWITCHBOARD_HTTP_PORT: "8123",
    },
    encoding: "utf8",
  });
  expect(r.status, r.stderr).toBe(0);
  return readdirSync(dir);
};

describe("a cluster process's CPU profile", () => {
  it("is written when a role process exits, named by role, port and pid", () => {
    const files = run(["--", "start", "--role", "gateway"]);
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(/^gateway-8123-\d+\.cpuprofile$/);
    const profile = JSON.parse(readFileSync(join(dir, files[0]!), "utf8")) as {
      nodes: unknown[];
      samples: unknown[];
    };
    expect(profile.nodes.length).toBeGreaterThan(1);
    expect(profile.samples.length).toBeGreaterThan(0);
  });

  it("leaves a process without --role (provisioning) alone", () => {
    expect(run(["--", "provision"])).toEqual([]);
  });
});
