/**
 * Group fan-out: one sender posts into a group of N members (all online, each on its own SDK
 * connection) at fixed open-loop rates. Per message, latency runs from its scheduled send time to its
 * arrival at each member; the figure that matters is the **last member's** (the message is only
 * delivered when everyone has it), p50 and p99 over the step's messages. CPU per delivery counts the
 * server's processes and the Kafka and Cassandra JVMs over the step.
 *
 * Every member must get every message of a step exactly once (a missing one is lost; a body arriving
 * twice under different message ids is a duplicate): either fails the step.
 *
 * With `offline` members the group is a channel: that many more members, never connected, are added
 * (in requests of 1,000), which takes it past groups.pullThreshold onto the pull model (ADR 0010).
 */
import { type Conversation, type IncomingMessage, SwitchboardClient } from "../sdk/src/index.js";
import { pool } from "./client.js";
import { nearestRank } from "./hist.js";
import { type SystemUnderTest, totalCpuSeconds } from "./sut.js";

export interface FanoutOptions {
  /** Members online (each on its own SDK connection). */
  members: number;
  /** Members added but never connected (default 0). */
  offline?: number;
  /** Groups of the same members (default 1); message k goes to group k mod groups (design.md G6). */
  groups?: number;
  rates: number[];
  warmupMs: number;
  measureMs: number;
  bodyBytes: number;
  /** After a step's last send, how long stragglers may take. */
  drainMs: number;
  log: (s: string) => void;
}

export interface FanoutStep {
  rate: number;
  /** Online members. */
  members: number;
  /** Online and offline members. */
  total_members: number;
  /** Groups the messages were spread over. */
  groups: number;
  delivery: "push" | "pull";
  messages: number;
  deliveries_per_second: number;
  last_member_p50_ms: number;
  last_member_p99_ms: number;
  last_member_max_ms: number;
  first_member_p50_ms: number;
  lost: number;
  duplicates: number;
  server_cpu_us_per_delivery: number;
  infra_cpu_us_per_delivery: number | null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Arrivals of each message (by its number in the run) at each member. */
class Arrivals {
  /** message number → member index → arrival times (more than one: a duplicate). */
  readonly at = new Map<number, Map<number, number[]>>();

  record(k: number, member: number, now: number): void {
    let byMember = this.at.get(k);
    if (!byMember) {
      byMember = new Map();
      this.at.set(k, byMember);
    }
    const times = byMember.get(member);
    if (times) times.push(now);
    else byMember.set(member, [now]);
  }

  complete(k: number, members: number): boolean {
    return (this.at.get(k)?.size ?? 0) === members;
  }
}

export async function runFanout(sut: SystemUnderTest, o: FanoutOptions): Promise<FanoutStep[]> {
  const names = Array.from({ length: o.members }, (_, i) => `fan-member-${i}`);
  const tokens = await sut.tokens(["fan-sender", ...names]);
  const arrivals = new Arrivals();
  const pad = "x".repeat(Math.max(0, o.bodyBytes - 12));
  const members = await pool(names, 50, async (_, i) => {
    const c = new SwitchboardClient({ url: sut.receiverUrl, token: tokens[i + 1]!, encoding: "binary" });
    c.on("message", (m: IncomingMessage) => {
      const k = Number.parseInt(m.message.body, 10);
      if (Number.isInteger(k)) arrivals.record(k, i, performance.now());
    });
    await c.connect();
    return c;
  });
  const sender = new SwitchboardClient({
    url: sut.senderUrl,
    token: tokens[0]!,
    encoding: "binary",
    maxPendingSends: 100_000,
  });
  await sender.connect();
  const steps: FanoutStep[] = [];
  try {
    const groups: Conversation[] = [];
    for (let g = 0; g < (o.groups ?? 1); g++) {
      let group = await sender.createGroup({ name: `fan-out bench ${g}`, members: names });
      const offline = Array.from({ length: o.offline ?? 0 }, (_, i) => `fan-offline-${i}`);
      for (let i = 0; i < offline.length; i += 1_000)
        group = await sender.addMembers(group.id, offline.slice(i, i + 1_000));
      groups.push(group);
    }
    const group = groups[0]!;
    o.log(
      `  ${groups.length} group(s) like ${group.id} with ${group.memberCount} members, ${o.members} of them online, on ${group.delivery}`,
    );
    let next = 0;
    const failures: string[] = [];
    const send = (k: number) =>
      void sender
        .send({ conversationId: groups[k % groups.length]!.id }, `${k}:${pad}`, { clientMsgId: `fan-${k}` })
        .catch((err: unknown) => failures.push(`message ${k}: ${String(err)}`));
    for (const rate of o.rates) {
      const scheduled = new Map<number, number>();
      const first = next;
      const total = Math.round(((o.warmupMs + o.measureMs) / 1000) * rate);
      const measuredFrom = first + Math.round((o.warmupMs / 1000) * rate);
      const t0 = performance.now() + 50;
      let cpuBefore = 0;
      let infraBefore = 0;
      await new Promise<void>((resolve) => {
        const timer = setInterval(() => {
          const now = performance.now();
          while (next < first + total && t0 + ((next - first) * 1000) / rate <= now) {
            if (next === measuredFrom) {
              cpuBefore = totalCpuSeconds(sut);
              infraBefore = sut.infra?.total() ?? 0;
            }
            scheduled.set(next, t0 + ((next - first) * 1000) / rate);
            send(next++);
          }
          if (next >= first + total) {
            clearInterval(timer);
            resolve();
          }
        }, 1);
      });
      const deadline = performance.now() + o.drainMs;
      while (performance.now() < deadline) {
        let done = true;
        for (let k = first; k < next && done; k++) done = arrivals.complete(k, o.members);
        if (done) break;
        await sleep(20);
      }
      const cpu = totalCpuSeconds(sut) - cpuBefore;
      const infra = (sut.infra?.total() ?? 0) - infraBefore;
      const last: number[] = [];
      const firstArrival: number[] = [];
      let lost = 0;
      let duplicates = 0;
      let deliveries = 0;
      for (let k = measuredFrom; k < next; k++) {
        const byMember = arrivals.at.get(k);
        const due = scheduled.get(k)!;
        lost += o.members - (byMember?.size ?? 0);
        if (!byMember) continue;
        let latest = 0;
        let earliest = Number.POSITIVE_INFINITY;
        for (const times of byMember.values()) {
          duplicates += times.length - 1;
          deliveries += 1;
          latest = Math.max(latest, times[0]! - due);
          earliest = Math.min(earliest, times[0]! - due);
        }
        if (byMember.size === o.members) last.push(latest);
        firstArrival.push(earliest);
      }
      last.sort((a, b) => a - b);
      firstArrival.sort((a, b) => a - b);
      const messages = next - measuredFrom;
      const step: FanoutStep = {
        rate,
        members: o.members,
        total_members: group.memberCount,
        groups: groups.length,
        delivery: group.delivery,
        messages,
        deliveries_per_second: Math.round(deliveries / (o.measureMs / 1000)),
        last_member_p50_ms: Math.round(nearestRank(last, 50) * 10) / 10,
        last_member_p99_ms: Math.round(nearestRank(last, 99) * 10) / 10,
        last_member_max_ms: Math.round((last.at(-1) ?? Number.NaN) * 10) / 10,
        first_member_p50_ms: Math.round(nearestRank(firstArrival, 50) * 10) / 10,
        lost,
        duplicates,
        server_cpu_us_per_delivery: deliveries > 0 ? Math.round((cpu * 1e6) / deliveries) : 0,
        infra_cpu_us_per_delivery:
          sut.infra && deliveries > 0 ? Math.round((infra * 1e6) / deliveries) : null,
      };
      o.log(`  fan-out ${rate}/s: ${JSON.stringify(step)}`);
      if (failures.length > 0) o.log(`  send failures: ${failures.splice(0).slice(0, 5).join("; ")}`);
      steps.push(step);
      for (let k = first; k < next; k++) arrivals.at.delete(k);
      await sleep(1000);
    }
  } finally {
    await Promise.all([...members, sender].map((c) => c.close()));
  }
  return steps;
}
