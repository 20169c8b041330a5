/**
 * Which build this process runs: the package's version (package.json, which the image ships beside
 * dist/) and the Node.js runtime. Exported as a `*_build_info` gauge, so a dashboard or an alert can
 * tell which versions a cluster runs during a rollout (the Prometheus convention: value 1, the facts
 * in labels), printed by `switchboard version` and in the line `start` prints once it runs.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Gauge, type Registry } from "prom-client";

/**
 * The version in the package root's package.json: the nearest one above this module named
 * "switchboard" (dist/internal/lib/ when built, internal/lib/ when the tests run the sources).
 */
function readVersion(): string {
  const start = dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; dir = dirname(dir)) {
    const file = join(dir, "package.json");
    if (existsSync(file)) {
      const parsed = JSON.parse(readFileSync(file, "utf8")) as { name?: unknown; version?: unknown };
      if (parsed.name === "switchboard" && typeof parsed.version === "string") return parsed.version;
    }
    if (dirname(dir) === dir) throw new Error(`no package.json of switchboard above ${start}`);
  }
}

export const BUILD_VERSION = readVersion();

/** Registers `<name>{version, node_version} 1` on the registry. */
export function registerBuildInfo(registry: Registry, name: string, help: string): void {
  const gauge = new Gauge({ name, help, labelNames: ["version", "node_version"], registers: [registry] });
  gauge.set({ version: BUILD_VERSION, node_version: process.versions.node }, 1);
}
