/**
 * `npm run bench:ab -- --base <git ref> [--runs N] [--keep-tree] -- <bench options>`: the same ladder
 * on two builds, interleaved, and their figures side by side.
 *
 * Why interleaved: on a shared 2-core machine the same build measures up to twice as slow in one
 * hour as in another (bench/README.md, "A shared machine"), so figures taken an hour apart compare
 * the hours, not the builds. Runs alternate (base, head, head, base, ...) so that a drift during the
 * comparison falls on both sides alike, and every run is reported, not only a mean.
 *
 * The base is built from `git` into a worktree of its own (with this checkout's node_modules: a base
 * with other dependencies is measured with these); the head is this checkout's dist/, which the npm
 * script compiles first. Each run's full output goes to a log file; this prints one line per run and
 * then, per ladder rate, each figure's range and median on both sides.
 */
import { execFileSync, spawn } from "node:child_process";
import {
  createWriteStream,
  existsSync,
  mkdtempSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

/** The ladder figures compared, per rate: name, how to read it from a step, and its unit. */
export const FIGURES = [
  { name: "p50", unit: "ms", of: (s: Step) => s.latency?.p50_ms },
  { name: "p99", unit: "ms", of: (s: Step) => s.latency?.p99_ms },
  { name: "server", unit: "µs/msg", of: (s: Step) => s.server_cpu_us_per_msg },
  { name: "all processes", unit: "µs/msg", of: (s: Step) => s.system_cpu_us_per_msg },
] as const;

/** The part of a ladder step of the bench's JSON summary that is compared. */
export interface Step {
  rate: number;
  latency?: { p50_ms?: number; p99_ms?: number };
  server_cpu_us_per_msg?: number | null;
  system_cpu_us_per_msg?: number | null;
  lost?: number;
}

export type Side = "base" | "head";

export interface Run {
  side: Side;
  ladder: Step[];
}

/** The ladder steps of one run's JSON summary (empty if it has none). */
export function ladderOf(summary: unknown): Step[] {
  const ladder = (summary as { ladder?: unknown }).ladder;
  return Array.isArray(ladder) ? (ladder as Step[]) : [];
}

/** The sides' order in round `round` (0-based): base first in even rounds, head first in odd ones. */
export function roundOrder(round: number): Side[] {
  return round % 2 === 0 ? ["base", "head"] : ["head", "base"];
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

export interface Comparison {
  rate: number;
  figure: string;
  unit: string;
  base: number[];
  head: number[];
  /** (head median - base median) / base median, in percent; undefined without both sides. */
  changePercent: number | undefined;
}

/** Per rate measured on either side and per figure either side has: both sides' values, in run order. */
export function compare(runs: Run[]): Comparison[] {
  const rates = [...new Set(runs.flatMap((r) => r.ladder.map((s) => s.rate)))].sort((a, b) => a - b);
  const out: Comparison[] = [];
  for (const rate of rates)
    for (const fig of FIGURES) {
      const values = (side: Side) =>
        runs
          .filter((r) => r.side === side)
          .map((r) => fig.of(r.ladder.find((s) => s.rate === rate) ?? { rate }))
          .filter((v): v is number => typeof v === "number" && Number.isFinite(v));
      const base = values("base");
      const head = values("head");
      if (base.length === 0 && head.length === 0) continue;
      const changePercent =
        base.length > 0 && head.length > 0 && median(base) !== 0
          ? ((median(head) - median(base)) / median(base)) * 100
          : undefined;
      out.push({ rate, figure: fig.name, unit: fig.unit, base, head, changePercent });
    }
  return out;
}

const range = (xs: number[]) => {
  if (xs.length === 0) return "-";
  const d = Math.max(...xs) >= 100 ? 0 : 1;
  const lo = Math.min(...xs).toFixed(d);
  const hi = Math.max(...xs).toFixed(d);
  return `${lo === hi ? lo : `${lo}–${hi}`} (${median(xs).toFixed(d)})`;
};

/** The comparison as a table: a row per rate and figure, each side's range (median), the change. */
export function comparisonTable(rows: Comparison[], baseLabel: string, headLabel: string): string {
  const head = ["rate/s", "figure", `base ${baseLabel}`, `head ${headLabel}`, "change"];
  const body = rows.map((c) => [
    String(c.rate),
    `${c.figure} ${c.unit}`,
    range(c.base),
    range(c.head),
    c.changePercent === undefined ? "-" : `${c.changePercent >= 0 ? "+" : ""}${c.changePercent.toFixed(1)} %`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)));
  return [head, widths.map((w) => "-".repeat(w)), ...body].map((cells) => line(cells).join("  ")).join("\n");
}

interface AbOptions {
  base: string;
  runs: number;
  keepTree: boolean;
  benchArgs: string[];
}

function parseArgs(argv: string[]): AbOptions {
  const split = argv.indexOf("--");
  const own = split >= 0 ? argv.slice(0, split) : argv;
  const benchArgs = split >= 0 ? argv.slice(split + 1) : [];
  let base: string | undefined;
  let runs = 3;
  let keepTree = false;
  for (let i = 0; i < own.length; i++) {
    const a = own[i]!;
    if (a === "--base") base = own[++i];
    else if (a === "--runs") runs = Number(own[++i]);
    else if (a === "--keep-tree") keepTree = true;
    else throw new Error(`bench:ab: unknown option ${a} (bench options go after --)`);
  }
  if (!base)
    throw new Error(
      "usage: npm run bench:ab -- --base <git ref> [--runs N] [--keep-tree] -- <bench options>",
    );
  if (!Number.isInteger(runs) || runs < 1) throw new Error("--runs must be a positive integer");
  if (benchArgs.includes("--json-out")) throw new Error("--json-out is set by bench:ab for each run");
  return { base, runs, keepTree, benchArgs };
}

const git = (repo: string, ...args: string[]) =>
  execFileSync("git", ["-C", repo, ...args], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  }).trim();

/** A worktree of `commit` with this checkout's node_modules, compiled (reused if already built). */
function baseTree(repo: string, commit: string, log: (s: string) => void): string {
  const dir = join(tmpdir(), `switchboard-ab-${commit.slice(0, 12)}`);
  if (existsSync(join(dir, "dist", "bench", "run.js"))) {
    log(`bench:ab: base ${commit.slice(0, 12)} already built in ${dir}`);
    return dir;
  }
  log(`bench:ab: building base ${commit.slice(0, 12)} in ${dir}`);
  if (!existsSync(dir)) git(repo, "worktree", "add", "--detach", dir, commit);
  if (!existsSync(join(dir, "node_modules")))
    symlinkSync(join(repo, "node_modules"), join(dir, "node_modules"));
  execFileSync(
    process.execPath,
    [join(repo, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"],
    {
      cwd: dir,
      stdio: "inherit",
    },
  );
  return dir;
}

/** One bench run of the build in `tree`: its JSON summary; its output goes to `logFile`. */
function benchRun(tree: string, args: string[], logFile: string): Promise<unknown> {
  const jsonOut = `${logFile}.json`;
  return new Promise((done, fail) => {
    const child = spawn(
      process.execPath,
      [join(tree, "dist", "bench", "run.js"), ...args, "--json-out", jsonOut],
      {
        cwd: tree,
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    const out = createWriteStream(logFile);
    child.stdout.pipe(out, { end: false });
    child.stderr.pipe(out, { end: false });
    child.on("error", fail);
    child.on("exit", (code, signal) => {
      out.end();
      if (code !== 0)
        return fail(new Error(`bench run in ${tree} failed (${signal ?? code}); see ${logFile}`));
      try {
        done(JSON.parse(readFileSync(jsonOut, "utf8")));
      } catch (err) {
        fail(new Error(`bench run in ${tree} wrote no JSON summary; see ${logFile}`, { cause: err }));
      }
    });
  });
}

const oneLine = (run: Run) =>
  run.ladder
    .map(
      (s) =>
        `${s.rate}/s p50 ${s.latency?.p50_ms?.toFixed(1) ?? "-"} p99 ${s.latency?.p99_ms?.toFixed(1) ?? "-"} ms, ` +
        `${s.system_cpu_us_per_msg ?? s.server_cpu_us_per_msg ?? "-"} µs/msg${s.lost ? `, ${s.lost} lost` : ""}`,
    )
    .join("; ");

async function main(): Promise<void> {
  const log = (s: string) => process.stderr.write(`${s}\n`);
  const o = parseArgs(process.argv.slice(2));
  const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
  const baseCommit = git(repo, "rev-parse", "--verify", `${o.base}^{commit}`);
  const headLabel = `${git(repo, "rev-parse", "--short", "HEAD")}${git(repo, "status", "--porcelain", "--untracked-files=no") ? "+changes" : ""}`;
  const baseLabel = baseCommit.slice(0, 7);
  const tree = baseTree(repo, baseCommit, log);
  const logs = mkdtempSync(join(tmpdir(), "switchboard-ab-logs-"));
  log(`bench:ab: ${o.runs} rounds of base ${baseLabel} and head ${headLabel}, interleaved; logs in ${logs}`);
  const runs: Run[] = [];
  try {
    for (let round = 0; round < o.runs; round++)
      for (const side of roundOrder(round)) {
        const logFile = join(logs, `${round + 1}-${side}.log`);
        const summary = await benchRun(side === "base" ? tree : repo, o.benchArgs, logFile);
        const run: Run = { side, ladder: ladderOf(summary) };
        runs.push(run);
        log(`  round ${round + 1} ${side}: ${oneLine(run)}`);
      }
  } finally {
    if (!o.keepTree) git(repo, "worktree", "remove", "--force", tree);
  }
  const rows = compare(runs);
  writeFileSync(
    join(logs, "comparison.json"),
    `${JSON.stringify({ base: baseCommit, head: headLabel, runs, rows })}\n`,
  );
  process.stdout.write(`\n${comparisonTable(rows, baseLabel, headLabel)}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href)
  main().catch((err: unknown) => {
    process.stderr.write(`bench:ab: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
