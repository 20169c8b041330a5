/**
 * Summarises a V8 .cpuprofile (from `node --cpu-prof`): self time by function and by package, so a
 * benchmark run can say where the server's core went. Also usable alone:
 *   node dist/bench/profile.js FILE.cpuprofile [TOP]
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface ProfileSummary {
  total_ms: number;
  by_function: Array<{ name: string; self_ms: number; pct: number }>;
  by_package: Array<{ name: string; self_ms: number; pct: number }>;
}

function packageOf(url: string, fn: string): string {
  if (!url) return fn.startsWith("(") ? fn : "(native/builtin)";
  const nm = url.lastIndexOf("node_modules/");
  if (nm >= 0) {
    const rest = url.slice(nm + "node_modules/".length).split("/");
    return rest[0]!.startsWith("@") ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  if (url.startsWith("node:")) return `node:${url.slice(5).split("/")[0]}`;
  const dist = url.indexOf("/dist/");
  if (dist >= 0) {
    const parts = url.slice(dist + 6).split("/");
    return parts.slice(0, Math.min(parts.length - 1, 2)).join("/") || parts[0]!;
  }
  return url;
}

export function summarizeProfile(path: string, top = 25): ProfileSummary {
  const p = JSON.parse(readFileSync(path, "utf8")) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  for (const n of p.nodes) byId.set(n.id, n);
  const selfUs = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + (p.timeDeltas[i] ?? 0));
  }
  const fn = new Map<string, number>();
  const pkg = new Map<string, number>();
  let total = 0;
  for (const [id, us] of selfUs) {
    const { functionName, url, lineNumber } = byId.get(id)!.callFrame;
    const short = url.replace(/^.*\/(node_modules|dist)\//, "$1/");
    const name = `${functionName || "(anonymous)"} ${short ? `${short}:${lineNumber + 1}` : ""}`.trim();
    fn.set(name, (fn.get(name) ?? 0) + us);
    const k = packageOf(url, functionName);
    pkg.set(k, (pkg.get(k) ?? 0) + us);
    total += us;
  }
  const rows = (m: Map<string, number>) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({
        name,
        self_ms: Math.round(us / 1000),
        pct: Math.round((1000 * us) / total) / 10,
      }));
  return { total_ms: Math.round(total / 1000), by_function: rows(fn), by_package: rows(pkg) };
}

/**
 * Percentages are of all samples and, second column, of the non-idle ones. Caveat: V8's sampler is
 * a thread of the profiled process, so when the server is pinned to one core it can only sample
 * when it gets that core; under SCHED_RR (--realtime) it sees almost only "(idle)". Prefer perf.
 */
export function formatProfile(s: ProfileSummary): string {
  const idle = s.by_package.find((r) => r.name === "(idle)")?.self_ms ?? 0;
  const busy = Math.max(1, s.total_ms - idle);
  const row = (r: { name: string; self_ms: number; pct: number }) =>
    `    ${r.pct.toFixed(1).padStart(5)}%  ${r.name === "(idle)" ? "     " : `${((100 * r.self_ms) / busy).toFixed(1).padStart(4)}%`}  ${r.name}`;
  const lines = [
    `CPU profile (V8 --cpu-prof, main thread): ${s.total_ms} ms sampled, ${busy} ms not idle`,
    "    all%  busy%  self time by package:",
  ];
  for (const r of s.by_package) lines.push(row(r));
  lines.push("    all%  busy%  self time by function:");
  for (const r of s.by_function) lines.push(row(r));
  return lines.join("\n");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write("usage: node dist/bench/profile.js FILE.cpuprofile [TOP]\n");
    process.exit(2);
  }
  process.stdout.write(`${formatProfile(summarizeProfile(file, Number(process.argv[3] ?? 30)))}\n`);
}
