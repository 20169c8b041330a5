/**
 * The open-loop 1:1 load generator: `pairs` sender connections each send to their own receiver
 * connection. Message k of a step is *scheduled* at t0 + k/rate; a 1 ms setInterval sends every
 * message that is due. Latency is taken from the scheduled time (so a late send, a slow server or a
 * stalled generator all count: no coordinated omission) to the moment the recipient's socket hands
 * the frame to the generator. Sender and receiver live in this process, so one monotonic clock
 * (performance.now) serves both ends.
 *
 * Message identity: a global number g, used as the frame id (echoed in the ack's reply_to) and as
 * the client_msg_id (echoed in the delivered message), indexes a ring of scheduled times.
 */
import { monitorEventLoopDelay } from "node:perf_hooks";
import type WebSocket from "ws";
import { openClient, pool, syncToLive } from "./client.js";
import { type Histogram, type LatencySummary, newHistogram, recordMs, summarize } from "./hist.js";
import {
  decodeFull,
  type Encoding,
  headBinary,
  headJson,
  KIND_ACK,
  KIND_ERROR,
  KIND_MESSAGE,
  messageEventCmid,
  newHead,
  sendEncoder,
} from "./wire.js";

const RING_BITS = 22;
const RING = 1 << RING_BITS;
const MASK = RING - 1;
const MEASURED = 1;
const DELIVERED = 2;
const ACKED = 4;

/**
 * Another system's client protocol, for the side-by-side comparisons (a peer such as Centrifugo):
 * how a connection opens ready to receive, how message g is sent, and what an incoming frame says.
 * Without one the generator speaks Switchboard's own protocol (wire.ts).
 */
export interface PeerProtocol {
  /** Opens user's connection and resolves once it receives what is sent to it. */
  open(url: string, user: string, token: string): Promise<WebSocket>;
  /** The frame that sends message g to `recipient`. */
  sender(recipient: string, body: string): { encode(g: number): string | Buffer };
  /** Reports each ack, delivery and error in a frame; answers the peer's pings on `ws` itself. */
  read(ws: WebSocket, data: Buffer, on: PeerFrameHandler): void;
}

export interface PeerFrameHandler {
  ack(g: number): void;
  delivered(g: number): void;
  error(g: number, reason: string): void;
}

export interface PairLoadOptions {
  /**
   * ws://host:port/ws of each pair's sender and of its receiver (the same server, or two gateways of
   * a cluster); the user is appended as ?u= for servers that take no token (bare).
   */
  senderUrl: string;
  receiverUrl: string;
  pairs: number;
  encoding: Encoding;
  bodyBytes: number;
  /** Also sync the senders, so their own messages are echoed to them (multi-device). */
  sendersLive: boolean;
  tokens: (users: string[]) => Promise<string[]>;
  appendUserToUrl?: boolean;
  /** A peer's protocol instead of Switchboard's (the comparisons). */
  protocol?: PeerProtocol | undefined;
}

export interface StepOptions {
  rate: number;
  warmupMs: number;
  measureMs: number;
  /**
   * After the schedule ends, wait for outstanding deliveries and acks while they keep arriving:
   * give up after this long without progress (or `drainMaxMs` in all). What is missing then is "lost".
   */
  drainTimeoutMs: number;
  /** The longest drain in all (default 30 s; a backlogged distributed step may need minutes). */
  drainMaxMs?: number;
  /** Stop the schedule early once this many seconds of messages are outstanding (overload). */
  backlogSecondsMax: number;
  /**
   * Optional resource probe of the server's processes (CPU seconds by process name) sampled over
   * the measured window; their sum is the server's CPU.
   */
  serverCpuSeconds?: () => Record<string, number>;
  /** Optional probe of the whole machine's busy CPU seconds, to expose foreign load. */
  machineBusySeconds?: () => number;
  /**
   * Optional probe of other processes that belong to the system under test (the Kafka and Cassandra
   * JVMs of the distributed backend): CPU seconds by name. Counted apart, not as foreign load.
   */
  infraCpuSeconds?: () => Record<string, number>;
}

export interface StepResult {
  rate: number;
  /** Messages per second actually sent during the measured window. */
  offered_rate: number;
  measured_seconds: number;
  /** Messages sent in the measured window. */
  sent: number;
  /** Messages sent in the whole step, its warm-up included (what the step's request counts cover). */
  step_sent: number;
  delivered: number;
  acked: number;
  lost: number;
  duplicates: number;
  errors: number;
  error_reasons: Record<string, number>;
  stale: number;
  aborted: boolean;
  /** Messages sent but not yet delivered when the schedule ended (a backlog, if many). */
  backlog_at_end: number;
  /** How long the drain after the schedule took (the backlog's tail). */
  drain_seconds: number;
  /** Deliveries of the step's messages per second, from its first scheduled send to its last delivery. */
  delivered_per_second: number;
  latency: LatencySummary;
  ack_latency: LatencySummary;
  /** How late the generator sent (actual − scheduled): the generator's own share of the latency. */
  send_lag: LatencySummary;
  generator_cpu_cores: number;
  generator_loop_delay_p99_ms: number;
  server_cpu_cores: number | null;
  server_cpu_us_per_msg: number | null;
  /** A server of several processes (a cluster): each one's cores, by name (their sum is server_cpu_cores). */
  server_cpu_cores_by_process?: Record<string, number>;
  /** Each server process's CPU µs per message sent in the window, by name ("server" when there is one). */
  server_cpu_us_per_msg_by_process?: Record<string, number>;
  /** CPU of the system's other processes (Kafka, Cassandra) during the window, cores by name. */
  infra_cpu_cores?: Record<string, number>;
  /** The same per message sent in the window, µs by name. */
  infra_cpu_us_per_msg?: Record<string, number>;
  /** Server plus infra CPU per message sent in the window (the whole system's cost of a message). */
  system_cpu_us_per_msg?: number | null;
  /** CPU used by other processes on this machine during the window (neither server, infra nor generator). */
  other_cpu_cores: number | null;
  generator_bound: boolean;
}

export class PairLoad {
  private senders: WebSocket[] = [];
  private receivers: WebSocket[] = [];
  private encoders: Array<{ encode(g: number): string | Buffer }> = [];
  private readonly sched = new Float64Array(RING);
  private readonly state = new Uint8Array(RING);
  private g = 1;
  private stepStart = 0;
  private stepEnd = 0;
  // Per-step counters (reset by runStep).
  private lat: Histogram = newHistogram();
  private ackLat: Histogram = newHistogram();
  private lag: Histogram = newHistogram();
  private delivered = 0;
  private deliveredAll = 0;
  private lastDeliveryAt = 0;
  private acked = 0;
  private ackedAll = 0;
  private dups = 0;
  private errors = 0;
  private errorReasons: Record<string, number> = {};
  private stale = 0;
  echoes = 0;
  closedUnexpectedly = 0;

  constructor(private readonly opts: PairLoadOptions) {}

  async connect(): Promise<void> {
    const { pairs, encoding } = this.opts;
    const senderIds = Array.from({ length: pairs }, (_, i) => `s${i}`);
    const receiverIds = Array.from({ length: pairs }, (_, i) => `r${i}`);
    const [st, rt] = await Promise.all([this.opts.tokens(senderIds), this.opts.tokens(receiverIds)]);
    if (this.opts.protocol) return this.connectPeer(this.opts.protocol, senderIds, receiverIds, st, rt);
    const urlFor = (url: string, u: string) => (this.opts.appendUserToUrl ? `${url}?u=${u}` : url);
    this.receivers = await pool(receiverIds, 50, async (u, i) => {
      const ws = await openClient({ url: urlFor(this.opts.receiverUrl, u), token: rt[i]!, encoding });
      await syncToLive(ws, encoding);
      return ws;
    });
    this.senders = await pool(senderIds, 50, async (u, i) => {
      const ws = await openClient({ url: urlFor(this.opts.senderUrl, u), token: st[i]!, encoding });
      if (this.opts.sendersLive) await syncToLive(ws, encoding);
      return ws;
    });
    const body = makeBody(this.opts.bodyBytes);
    this.encoders = receiverIds.map((r) => sendEncoder(encoding, r, body));
    const head = newHead();
    const json = encoding === "json";
    for (const ws of this.receivers) {
      ws.on("message", (data: Buffer, isBinary: boolean) => {
        const now = performance.now();
        let g: number;
        let kind: number;
        if (json || !isBinary) {
          kind = headJson(data.toString("utf8"), head).kind;
          g = head.cmid;
        } else {
          kind = headBinary(data, head).kind;
          g = kind === KIND_MESSAGE ? messageEventCmid(data, head.start, head.end) : -1;
        }
        if (kind === KIND_MESSAGE) this.onDelivered(g, now);
      });
      ws.on("close", () => this.closedUnexpectedly++);
    }
    for (const ws of this.senders) {
      ws.on("message", (data: Buffer, isBinary: boolean) => {
        const now = performance.now();
        const h = json || !isBinary ? headJson(data.toString("utf8"), head) : headBinary(data, head);
        if (h.kind === KIND_ACK) this.onAck(h.replyTo, now);
        else if (h.kind === KIND_MESSAGE) this.echoes++;
        else if (h.kind === KIND_ERROR) this.onError(h.replyTo, data, isBinary);
      });
      ws.on("close", () => this.closedUnexpectedly++);
    }
  }

  /** The same pairs on a peer's protocol (no echo: a peer's sender does not receive its own messages). */
  private async connectPeer(
    protocol: PeerProtocol,
    senderIds: string[],
    receiverIds: string[],
    senderTokens: string[],
    receiverTokens: string[],
  ): Promise<void> {
    this.receivers = await pool(receiverIds, 50, (u, i) =>
      protocol.open(this.opts.receiverUrl, u, receiverTokens[i]!),
    );
    this.senders = await pool(senderIds, 50, (u, i) =>
      protocol.open(this.opts.senderUrl, u, senderTokens[i]!),
    );
    const body = makeBody(this.opts.bodyBytes);
    this.encoders = receiverIds.map((r) => protocol.sender(r, body));
    const handler: PeerFrameHandler = {
      ack: (g) => this.onAck(g, performance.now()),
      delivered: (g) => this.onDelivered(g, performance.now()),
      error: (g, reason) => this.countError(g, reason),
    };
    for (const ws of [...this.receivers, ...this.senders]) {
      ws.on("message", (data: Buffer) => protocol.read(ws, data, handler));
      ws.on("close", () => this.closedUnexpectedly++);
    }
  }

  private onDelivered(g: number, now: number): void {
    if (g < this.stepStart || g >= this.stepEnd) {
      this.stale++;
      return;
    }
    const i = g & MASK;
    const s = this.state[i]!;
    if (s & DELIVERED) {
      this.dups++;
      return;
    }
    this.state[i] = s | DELIVERED;
    this.deliveredAll++;
    this.lastDeliveryAt = now;
    if (s & MEASURED) {
      this.delivered++;
      recordMs(this.lat, now - this.sched[i]!);
    }
  }

  private onAck(g: number, now: number): void {
    if (g < this.stepStart || g >= this.stepEnd) return;
    const i = g & MASK;
    const s = this.state[i]!;
    if (s & ACKED) return;
    this.state[i] = s | ACKED;
    this.ackedAll++;
    if (s & MEASURED) {
      this.acked++;
      recordMs(this.ackLat, now - this.sched[i]!);
    }
  }

  private onError(g: number, data: Buffer, isBinary: boolean): void {
    let reason = "unknown";
    try {
      reason = String(decodeFull(isBinary ? data : data.toString("utf8")).value?.reason ?? "unknown");
    } catch {
      /* keep "unknown" */
    }
    this.countError(g, reason);
  }

  private countError(g: number, reason: string): void {
    this.errors++;
    this.errorReasons[reason] = (this.errorReasons[reason] ?? 0) + 1;
    if (g >= this.stepStart && g < this.stepEnd) this.state[g & MASK]! |= ACKED; // answered, not acked
  }

  /** One open-loop step: warm-up then a measured window at `rate`, then a bounded drain. */
  async runStep(o: StepOptions): Promise<StepResult> {
    const period = 1000 / o.rate;
    const warmupCount = Math.round((o.rate * o.warmupMs) / 1000);
    const total = warmupCount + Math.round((o.rate * o.measureMs) / 1000);
    if (total >= RING / 2) throw new Error(`step of ${total} messages exceeds the ring (${RING / 2})`);
    const gBase = this.g;
    if (gBase + total >= 2 ** 32) throw new Error("message numbers exhausted (uint32 frame ids)");
    this.g += total;
    this.stepStart = gBase;
    this.stepEnd = gBase + total;
    this.lat = newHistogram();
    this.ackLat = newHistogram();
    this.lag = newHistogram();
    this.delivered = this.deliveredAll = this.acked = this.ackedAll = 0;
    this.lastDeliveryAt = 0;
    this.dups = this.errors = this.stale = 0;
    this.errorReasons = {};
    const loop = monitorEventLoopDelay({ resolution: 1 });
    const pairs = this.senders.length;
    const senders = this.senders;
    const encoders = this.encoders;
    const sched = this.sched;
    const state = this.state;
    const lag = this.lag;
    const backlogMax = o.rate * o.backlogSecondsMax;

    let k = 0;
    let aborted = false;
    let measureStart = 0;
    let measureEnd = 0;
    let cpuStart = process.cpuUsage();
    let serverCpuStart: Record<string, number> = {};
    let machineStart = 0;
    let infraStart: Record<string, number> = {};
    let measuredSent = 0;
    const t0 = performance.now() + 2;
    await new Promise<void>((resolve) => {
      const tick = () => {
        const now = performance.now();
        let due = Math.floor((now - t0) / period) + 1;
        if (due > total) due = total;
        while (k < due) {
          if (k === warmupCount) {
            measureStart = now;
            cpuStart = process.cpuUsage();
            loop.enable();
            serverCpuStart = o.serverCpuSeconds?.() ?? {};
            machineStart = o.machineBusySeconds?.() ?? 0;
            infraStart = o.infraCpuSeconds?.() ?? {};
          }
          const g = gBase + k;
          const i = g & MASK;
          const at = t0 + k * period;
          sched[i] = at;
          const measured = k >= warmupCount;
          state[i] = measured ? MEASURED : 0;
          senders[g % pairs]!.send(encoders[g % pairs]!.encode(g));
          if (measured) {
            recordMs(lag, now - at);
            measuredSent++;
          }
          k++;
        }
        if (k >= total || k - this.deliveredAll > backlogMax) {
          aborted = k < total;
          clearInterval(timer);
          measureEnd = performance.now();
          resolve();
        }
      };
      const timer = setInterval(tick, 1);
    });
    const cpu = process.cpuUsage(cpuStart);
    const backlogAtEnd = k - this.deliveredAll;
    loop.disable();
    const serverCpuEnd = o.serverCpuSeconds?.() ?? {};
    const machineEnd = o.machineBusySeconds?.() ?? 0;
    const infraEnd = o.infraCpuSeconds?.() ?? {};
    const windowS = measureStart > 0 ? (measureEnd - measureStart) / 1000 : 0;

    const drainEnd = performance.now() + Math.max(o.drainMaxMs ?? 30_000, o.drainTimeoutMs);
    let lastProgress = performance.now();
    let seen = this.deliveredAll + this.ackedAll;
    while ((this.deliveredAll < k || this.ackedAll < k) && performance.now() < drainEnd) {
      await new Promise((r) => setTimeout(r, 5));
      const now = performance.now();
      if (this.deliveredAll + this.ackedAll > seen) {
        seen = this.deliveredAll + this.ackedAll;
        lastProgress = now;
      } else if (now - lastProgress > o.drainTimeoutMs) break;
    }
    const drainSeconds = (performance.now() - measureEnd) / 1000;
    const genCores = windowS > 0 ? (cpu.user + cpu.system) / 1e6 / windowS : 0;
    const serverCoresBy: Record<string, number> = {};
    const serverUsBy: Record<string, number> = {};
    let serverSeconds = 0;
    for (const [name, end] of Object.entries(serverCpuEnd)) {
      const used = end - (serverCpuStart[name] ?? end);
      serverSeconds += used;
      if (windowS > 0) serverCoresBy[name] = Math.round((used / windowS) * 100) / 100;
      if (measuredSent > 0) serverUsBy[name] = Math.round((used * 1e6) / measuredSent);
    }
    const serverCores = o.serverCpuSeconds && windowS > 0 ? serverSeconds / windowS : null;
    const sendLag = summarize(this.lag);
    const infraCores: Record<string, number> = {};
    const infraUs: Record<string, number> = {};
    let infraSeconds = 0;
    if (o.infraCpuSeconds && windowS > 0)
      for (const [name, end] of Object.entries(infraEnd)) {
        const start = infraStart[name];
        if (start === undefined) continue; // not read at the window's start: unknown, not zero
        const used = end - start;
        infraSeconds += used;
        infraCores[name] = Math.round((used / windowS) * 100) / 100;
        if (measuredSent > 0) infraUs[name] = Math.round((used * 1e6) / measuredSent);
      }
    const otherCores =
      o.machineBusySeconds && serverCores !== null && windowS > 0
        ? Math.max(0, (machineEnd - machineStart - infraSeconds) / windowS - serverCores - genCores)
        : null;
    const loopP99 = windowS > 0 ? loop.percentile(99) / 1e6 : 0;
    return {
      rate: o.rate,
      offered_rate: windowS > 0 ? Math.round(measuredSent / windowS) : 0,
      measured_seconds: Math.round(windowS * 100) / 100,
      sent: measuredSent,
      step_sent: k,
      delivered: this.delivered,
      acked: this.acked,
      lost: measuredSent - this.delivered,
      duplicates: this.dups,
      errors: this.errors,
      error_reasons: this.errorReasons,
      stale: this.stale,
      aborted,
      backlog_at_end: backlogAtEnd,
      drain_seconds: Math.round(drainSeconds * 100) / 100,
      delivered_per_second:
        this.lastDeliveryAt > t0 ? Math.round(this.deliveredAll / ((this.lastDeliveryAt - t0) / 1000)) : 0,
      latency: summarize(this.lat),
      ack_latency: summarize(this.ackLat),
      send_lag: sendLag,
      generator_cpu_cores: Math.round(genCores * 100) / 100,
      generator_loop_delay_p99_ms: Math.round(loopP99 * 100) / 100,
      server_cpu_cores: serverCores === null ? null : Math.round(serverCores * 100) / 100,
      server_cpu_us_per_msg:
        serverCores === null || measuredSent === 0 ? null : Math.round((serverSeconds * 1e6) / measuredSent),
      ...(Object.keys(serverCoresBy).length > 1 ? { server_cpu_cores_by_process: serverCoresBy } : {}),
      ...(Object.keys(serverUsBy).length > 0 ? { server_cpu_us_per_msg_by_process: serverUsBy } : {}),
      ...(o.infraCpuSeconds
        ? {
            infra_cpu_cores: infraCores,
            infra_cpu_us_per_msg: infraUs,
            system_cpu_us_per_msg:
              serverCores === null || measuredSent === 0
                ? null
                : Math.round(((serverSeconds + infraSeconds) * 1e6) / measuredSent),
          }
        : {}),
      other_cpu_cores: otherCores === null ? null : Math.round(otherCores * 100) / 100,
      // The generator could not hold the schedule because it ran out of CPU (its lag under foreign
      // load is reported, and counted in the latency, but does not make the step generator-bound).
      generator_bound:
        genCores > 0.9 ||
        (sendLag.p99_ms > 5 && genCores > 0.7) ||
        (windowS > 0 && measuredSent / windowS < 0.97 * o.rate),
    };
  }

  async close(): Promise<void> {
    for (const ws of [...this.senders, ...this.receivers]) {
      ws.removeAllListeners("close");
      ws.terminate();
    }
  }
}

/** A ~n-byte printable ASCII body (fixed per run, allocated once). */
export function makeBody(n: number): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  let s = "";
  for (let i = 0; i < n; i++) s += alphabet[(i * 7919) % alphabet.length];
  return s;
}
