/**
 * Centrifugo v6 beside Switchboard in the same run (the peer issue 12 measures against): built by this
 * bench with `go install` from the Go module proxy and cached, run on the server's core with its memory
 * engine, history on (each personal channel keeps its last 1,000 publications for 10 minutes, what a
 * reconnecting client recovers from) or off, and driven by the same open-loop generator over
 * Centrifugo's JSON client protocol: each sender publishes into its receiver's personal channel
 * (`personal:#r<i>`, which Centrifugo subscribes the receiver to when it connects), and the publish
 * reply is the ack. Centrifugo answers a publish once it is in memory: its ack is not durable,
 * Switchboard's is (a group commit to disk first).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import {
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { pool, signTokens } from "./client.js";
import { IDLE_CONNECTS_CONCURRENT, idleSource } from "./idle.js";
import type { PeerFrameHandler, PeerProtocol } from "./loadgen.js";
import { openRaw, type RawConnection } from "./raw-connect.js";
import { forget, hasTaskset, type Killable, killOnExit, procCpuSeconds, procStatusKb } from "./server.js";
import type { StopReport, SystemUnderTest } from "./sut.js";

export const CENTRIFUGO_VERSION = "v6.9.1";
const MODULE = "github.com/centrifugal/centrifugo/v6";
const SECRET = new TextEncoder().encode("switchboard-bench-centrifugo");
const HISTORY = { history_size: 1_000, history_ttl: "600s", force_recovery: true };

/** The cached binary, built on first use; a missing Go toolchain is an error that says what to do. */
export function centrifugoBinary(log: (s: string) => void): string {
  const cache = process.env.SWITCHBOARD_CACHE ?? join(homedir(), ".cache", "switchboard");
  const dir = join(cache, `centrifugo-${CENTRIFUGO_VERSION}`);
  const bin = join(dir, "centrifugo");
  if (existsSync(bin)) return bin;
  try {
    execFileSync("go", ["version"], { stdio: "pipe" });
  } catch (err) {
    throw new Error(
      `the Centrifugo comparison builds ${MODULE}@${CENTRIFUGO_VERSION} with Go (1.26 or newer), and \`go version\` failed: ${(err as Error).message}. Install Go from go.dev/dl, or leave the comparison out with --skip centrifugo`,
    );
  }
  log(`centrifugo: go install ${MODULE}@${CENTRIFUGO_VERSION} (first run only: a few minutes on 2 cores)`);
  mkdirSync(dir, { recursive: true });
  const staging = mkdtempSync(join(dir, ".build-"));
  try {
    execFileSync("go", ["install", `${MODULE}@${CENTRIFUGO_VERSION}`], {
      env: { ...process.env, GOBIN: staging, GOFLAGS: "-mod=mod" },
      stdio: ["ignore", "ignore", "inherit"],
    });
    renameSync(join(staging, "centrifugo"), bin); // whole, or not there: a failed build leaves nothing
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
  return bin;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

function config(port: number, history: boolean): Record<string, unknown> {
  return {
    http_server: { address: "127.0.0.1", port },
    log: { level: "error" },
    health: { enabled: true },
    client: {
      token: { hmac_secret_key: new TextDecoder().decode(SECRET) },
      allowed_origins: ["*"],
      subscribe_to_user_personal_channel: { enabled: true, personal_channel_namespace: "personal" },
    },
    channel: {
      namespaces: [{ name: "personal", allow_publish_for_client: true, ...(history ? HISTORY : {}) }],
    },
  };
}

/** One Centrifugo process with the memory engine, pinned like Switchboard's server. */
export class CentrifugoSystem implements SystemUnderTest, Killable {
  readonly userInUrl = false;
  readonly infra = undefined;
  readonly protocol = centrifugoProtocol;
  readonly senderUrl: string;
  readonly receiverUrl: string;
  readonly description: string;
  private exitCode: number | null | undefined;
  private readonly exited: Promise<void>;

  private constructor(
    private readonly child: ChildProcess,
    private readonly dir: string,
    readonly port: number,
    readonly history: boolean,
  ) {
    this.senderUrl = this.receiverUrl = `ws://127.0.0.1:${port}/connection/websocket`;
    this.description = `centrifugo ${CENTRIFUGO_VERSION} pid ${child.pid} on port ${port}, memory engine, history ${history ? "on" : "off"}`;
    this.exited = new Promise((resolve) =>
      child.once("exit", (code, signal) => {
        this.exitCode = code ?? (signal ? 128 : null);
        forget(this);
        resolve();
      }),
    );
  }

  static async start(o: {
    history: boolean;
    cpus: string | undefined;
    log: (s: string) => void;
  }): Promise<CentrifugoSystem> {
    const bin = centrifugoBinary(o.log);
    const dir = mkdtempSync(join(tmpdir(), "switchboard-bench-centrifugo-"));
    const port = await freePort();
    writeFileSync(join(dir, "config.json"), JSON.stringify(config(port, o.history)));
    let argv = [bin, "--config", join(dir, "config.json")];
    if (o.cpus !== undefined && hasTaskset()) argv = ["taskset", "-c", o.cpus, ...argv];
    const child = spawn(argv[0]!, argv.slice(1), { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    const out = createWriteStream(join(dir, "centrifugo.log"));
    child.stdout!.pipe(out);
    child.stderr!.pipe(out);
    const system = new CentrifugoSystem(child, dir, port, o.history);
    killOnExit(system);
    const deadline = Date.now() + 30_000;
    for (;;) {
      const ok = await fetch(`http://127.0.0.1:${port}/health`).then(
        (r) => r.ok,
        () => false,
      );
      if (ok) return system;
      if (!system.running || Date.now() > deadline) {
        system.killNow();
        throw new Error(
          `centrifugo did not answer /health within 30 s (log: ${join(dir, "centrifugo.log")})`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  get perfPid(): number | undefined {
    return this.child.pid;
  }

  tokens(users: string[]): Promise<string[]> {
    return signTokens(SECRET, users);
  }

  serverCpuSeconds(): Record<string, number> {
    return { server: procCpuSeconds(this.child.pid!) };
  }

  async metrics(): Promise<undefined> {
    return undefined; // Switchboard's stage metrics: Centrifugo has none of them
  }

  rssKb(): Record<string, number> {
    return { server: procStatusKb(this.child.pid!, "VmRSS") };
  }

  checkRunning(): void {
    if (!this.running) throw new Error(`centrifugo exited (${this.exitCode}); log in ${this.dir}`);
  }

  async stop(): Promise<StopReport> {
    if (this.running) {
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => this.child.kill("SIGKILL"), 10_000);
      await this.exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
    return { problems: this.exitCode ? [`centrifugo exit code ${this.exitCode}`] : [] };
  }

  killNow(): void {
    if (this.running) this.child.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }

  describe(): Record<string, unknown> {
    return { pid: this.child.pid, port: this.port, version: CENTRIFUGO_VERSION, history: this.history };
  }
}

/** A reply or push of Centrifugo's JSON protocol, as far as the generator reads it. */
interface Reply {
  id?: number;
  error?: { code?: number; message?: string };
  push?: { pub?: { data?: { g?: number } } };
}

/** A connection that Centrifugo accepted (its connect reply came), subscribed to the user's personal channel. */
function openCentrifugo(url: string, token: string, localAddress?: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, ...(localAddress ? { localAddress } : {}) });
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error("centrifugo: no connect reply within 30 s"));
    }, 30_000);
    ws.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    ws.once("open", () => ws.send(JSON.stringify({ id: 1, connect: { token } })));
    ws.once("message", (data: Buffer) => {
      clearTimeout(timer);
      const reply = JSON.parse(data.toString("utf8").split("\n", 1)[0]!) as Reply & { connect?: unknown };
      if (reply.id !== 1 || !reply.connect)
        reject(new Error(`centrifugo: connect refused: ${data.toString("utf8")}`));
      else resolve(ws);
    });
  });
}

/**
 * Centrifugo's bidirectional JSON protocol: commands `{"id":n,"connect":{…}}` and
 * `{"id":n,"publish":{"channel":…,"data":…}}`, answered by `{"id":n,…}`; publications arrive as
 * `{"push":{"channel":…,"pub":{"data":…}}}`; several may share a frame, one per line; the server's
 * ping is `{}`, answered with `{}`.
 */
export const centrifugoProtocol: PeerProtocol = {
  open: (url: string, _user: string, token: string) => openCentrifugo(url, token),

  sender(recipient: string, body: string) {
    const channel = JSON.stringify(`personal:#${recipient}`);
    const text = JSON.stringify(body);
    return {
      encode: (g: number) => `{"id":${g},"publish":{"channel":${channel},"data":{"g":${g},"b":${text}}}}`,
    };
  },

  read(ws: WebSocket, data: Buffer, on: PeerFrameHandler): void {
    for (const line of data.toString("utf8").split("\n")) {
      if (line === "") continue;
      if (line === "{}") {
        ws.send("{}"); // the server's ping
        continue;
      }
      const reply = JSON.parse(line) as Reply;
      const g = reply.push?.pub?.data?.g;
      if (g !== undefined) on.delivered(g);
      else if (reply.error && reply.id !== undefined)
        on.error(reply.id, `centrifugo ${reply.error.code}: ${reply.error.message}`);
      else if (reply.id !== undefined) on.ack(reply.id);
    }
  },
};

export interface PeerIdleResult {
  connections: number;
  failed: number;
  connects_per_second: number;
  server_cpu_us_per_connect: number;
  rss_before_kb: number;
  rss_after_kb: number;
  rss_per_conn_kb: number;
}

/**
 * RSS per idle authenticated connection of a running Centrifugo, measured like Switchboard's (idle.ts):
 * N connections that connect and then stay silent (answering pings), opened by the same client, pool
 * and source addresses, the median of five readings before and after. Go returns freed memory to the OS lazily,
 * so there is no forced collection to match Switchboard's post-GC figure: compare with its as-found one.
 */
export async function centrifugoIdle(
  system: CentrifugoSystem,
  connections: number,
  log: (s: string) => void,
): Promise<PeerIdleResult> {
  const users = Array.from({ length: connections }, (_, i) => `idle${i}`);
  const tokens = await system.tokens(users);
  const medianRss = async () => {
    const xs: number[] = [];
    for (let i = 0; i < 5; i++) {
      xs.push(system.rssKb().server!);
      await new Promise((r) => setTimeout(r, 200));
    }
    return xs.sort((a, b) => a - b)[2]!;
  };
  const before = await medianRss();
  let failed = 0;
  const started = performance.now();
  const cpuStart = system.serverCpuSeconds().server!;
  // The same client, pool and source addresses as Switchboard's idle phase (idle.ts).
  const conns = await pool(tokens, IDLE_CONNECTS_CONCURRENT, (token, i) =>
    openRaw({
      url: system.senderUrl,
      firstFrame: JSON.stringify({ id: 1, connect: { token } }),
      accept: (payload) => {
        const reply = JSON.parse(payload.toString("utf8").split("\n", 1)[0]!) as Reply & {
          connect?: unknown;
        };
        return (
          (reply.id === 1 && reply.connect !== undefined) || `connect refused: ${payload.toString("utf8")}`
        );
      },
      answer: (payload) => (payload.toString("utf8") === "{}" ? "{}" : undefined),
      ...idleSource(i, tokens.length),
    }).catch(() => {
      failed++;
      return undefined;
    }),
  );
  const open = conns.filter((c): c is RawConnection => c !== undefined);
  const seconds = (performance.now() - started) / 1000;
  const connectCpuS = system.serverCpuSeconds().server! - cpuStart;
  log(
    `  ${open.length} centrifugo connections open in ${seconds.toFixed(1)} s${failed ? ` (${failed} failed)` : ""}`,
  );
  await new Promise((r) => setTimeout(r, 3_000));
  const after = await medianRss();
  for (const ws of open) ws.terminate();
  return {
    connections: open.length,
    failed,
    connects_per_second: Math.round(open.length / seconds),
    server_cpu_us_per_connect: Math.round((connectCpuS * 1e6) / Math.max(1, open.length)),
    rss_before_kb: before,
    rss_after_kb: after,
    rss_per_conn_kb: Math.round(((after - before) / Math.max(1, open.length)) * 100) / 100,
  };
}
