/**
 * Idle-connection memory (docs/design.md §7, G1): opens N authenticated WebSockets that then stay
 * silent (the lean client of raw-connect.ts answers the server's pings), and reads the server's VmRSS
 * and V8 heap before and after. The connects/s it prints is also the connect rate of design.md G3,
 * with the server's CPU per connect beside it (a figure the generator's speed does not bend).
 * The generator holds the other ends, so N stays below this process's 20,000 open-file cap.
 * Connections take the kernel's ephemeral ports on 127.0.0.1 (loopback reuses TIME_WAIT ports,
 * net.ipv4.tcp_tw_reuse=2); only past SHARED_SOURCE_MAX do source addresses rotate over 127.0.0.x,
 * because binding a source address makes the kernel search the port range itself, which cost the
 * generator ~1 ms of system time per connect with 30,000 TIME_WAIT sockets about.
 */
import { mintTokens, pool } from "./client.js";
import { openRaw, type RawConnection } from "./raw-connect.js";
import type { ServerProcess } from "./server.js";
import { decodeFull, type Encoding, SUBPROTOCOL } from "./wire.js";

const SHARED_SOURCE_MAX = 20_000;
/** Connects in flight at once, for Switchboard and the peers alike. */
export const IDLE_CONNECTS_CONCURRENT = 200;

/** The source address of the i-th of n connections (none: the kernel picks the port on 127.0.0.1). */
export function idleSource(i: number, n: number): { localAddress?: string } {
  return n <= SHARED_SOURCE_MAX ? {} : { localAddress: `127.0.0.${1 + Math.floor(i / 5000)}` };
}

/** Opens one authenticated connection and resolves at its welcome. */
export function openIdle(
  url: string,
  token: string,
  encoding: Encoding,
  source: { localAddress?: string } = {},
) {
  return openRaw({
    url,
    protocol: SUBPROTOCOL[encoding],
    headers: { Authorization: `Bearer ${token}` },
    accept: (payload, binary) => {
      const frame = decodeFull(binary ? payload : payload.toString("utf8"));
      return frame.kind === "welcome" || `expected welcome, got ${frame.kind}`;
    },
    ...source,
  });
}

export interface IdleResult {
  connections: number;
  failed: number;
  connect_seconds: number;
  connects_per_second: number;
  /** Server CPU (all its threads) per connect while they opened. */
  server_cpu_us_per_connect: number;
  rss_before_kb: number;
  rss_after_kb: number;
  rss_per_conn_kb: number;
  rss_per_10k_conns_mb: number;
  /** The same after a forced full GC (null without the inspector). */
  rss_gc_before_kb: number | null;
  rss_gc_after_kb: number | null;
  rss_gc_per_conn_kb: number | null;
  rss_gc_per_10k_conns_mb: number | null;
  heap_before_mb: number | null;
  heap_after_mb: number | null;
  heap_per_conn_kb: number | null;
  rss_after_close_kb: number;
  server_cpu_idle_cores: number;
}

const HEAP = "nodejs_heap_size_used_bytes";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function heapMb(server: ServerProcess): Promise<number | null> {
  try {
    const m = await server.metrics([HEAP]);
    return m[HEAP] === undefined ? null : m[HEAP] / 2 ** 20;
  } catch {
    return null;
  }
}

/** Median of `samples` RSS readings `gapMs` apart (RSS moves with GC; the median damps spikes). */
async function medianRss(server: ServerProcess, samples: number, gapMs: number): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < samples; i++) {
    xs.push(server.rssKb());
    if (i < samples - 1) await sleep(gapMs);
  }
  xs.sort((a, b) => a - b);
  return xs[Math.floor(xs.length / 2)]!;
}

/**
 * RSS as it stands, then after a forced full GC (when the server exposes its inspector), so the
 * figure does not depend on when V8 last collected; the heap is read after the GC.
 */
async function readings(
  server: ServerProcess,
): Promise<{ rss: number; rssGc: number | null; heap: number | null }> {
  const rss = await medianRss(server, 5, 200);
  const gc = await server.collectGarbage();
  if (gc) await sleep(500);
  const rssGc = gc ? await medianRss(server, 3, 200) : null;
  return { rss, rssGc, heap: await heapMb(server) };
}

export async function runIdle(
  server: ServerProcess,
  opts: {
    connections: number;
    concurrency: number;
    settleMs: number;
    encoding: Encoding;
    log: (s: string) => void;
  },
): Promise<IdleResult> {
  const url = `ws://127.0.0.1:${server.port}/ws`;
  const n = opts.connections;
  const users = Array.from({ length: n }, (_, i) => `idle${i}`);
  const t = performance.now();
  const tokens = await mintTokens(server.dataDir, users);
  opts.log(`  minted ${n} tokens in ${((performance.now() - t) / 1000).toFixed(1)} s`);

  // Warm the server's connect path (JIT, lazily created structures) before the baseline reading.
  const warm = await mintTokens(
    server.dataDir,
    Array.from({ length: 200 }, (_, i) => `warm${i}`),
  );
  const warmConns = await pool(warm, 50, (token) => openIdle(url, token, opts.encoding));
  for (const ws of warmConns) ws.close();
  await sleep(opts.settleMs);
  const before = await readings(server);

  let failed = 0;
  let firstError = "";
  const started = performance.now();
  const cpuStart = server.cpuSeconds();
  const conns = await pool(users, opts.concurrency, async (_u, i) => {
    try {
      return await openIdle(url, tokens[i]!, opts.encoding, idleSource(i, n));
    } catch (err) {
      failed++;
      firstError ||= (err as Error).message;
      return undefined;
    }
  });
  const connectS = (performance.now() - started) / 1000;
  const connectCpuS = server.cpuSeconds() - cpuStart;
  const open = conns.filter((c): c is RawConnection => c !== undefined);
  opts.log(
    `  ${open.length} connections open in ${connectS.toFixed(1)} s${failed ? ` (${failed} failed: ${firstError})` : ""}`,
  );
  await sleep(opts.settleMs);
  const after = await readings(server);
  const cpu0 = server.cpuSeconds();
  await sleep(3000);
  const idleCores = (server.cpuSeconds() - cpu0) / 3;
  for (const ws of open) ws.terminate();
  await sleep(opts.settleMs);
  const afterClose = await readings(server);
  const opened = Math.max(1, open.length);
  const perConn = (after.rss - before.rss) / opened;
  const perConnGc =
    before.rssGc !== null && after.rssGc !== null ? (after.rssGc - before.rssGc) / opened : null;
  const r2 = (x: number) => Math.round(x * 100) / 100;
  return {
    connections: open.length,
    failed,
    connect_seconds: r2(connectS),
    connects_per_second: Math.round(open.length / connectS),
    server_cpu_us_per_connect: Math.round((connectCpuS * 1e6) / opened),
    rss_before_kb: before.rss,
    rss_after_kb: after.rss,
    rss_per_conn_kb: r2(perConn),
    rss_per_10k_conns_mb: r2((perConn * 10_000) / 1024),
    rss_gc_before_kb: before.rssGc,
    rss_gc_after_kb: after.rssGc,
    rss_gc_per_conn_kb: perConnGc === null ? null : r2(perConnGc),
    rss_gc_per_10k_conns_mb: perConnGc === null ? null : r2((perConnGc * 10_000) / 1024),
    heap_before_mb: before.heap === null ? null : r2(before.heap),
    heap_after_mb: after.heap === null ? null : r2(after.heap),
    heap_per_conn_kb:
      before.heap === null || after.heap === null ? null : r2(((after.heap - before.heap) * 1024) / opened),
    rss_after_close_kb: afterClose.rssGc ?? afterClose.rss,
    server_cpu_idle_cores: r2(idleCores),
  };
}
