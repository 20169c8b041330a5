/**
 * kafkajs's log lines, at the level an operator should see them.
 *
 * kafkajs logs every failed response at ERROR, including the ones it retries by design: a fresh
 * consumer group whose coordinator is not elected yet, a rebalance, a leader election. A process
 * that starts or joins a group therefore printed "error: kafka: Response GroupCoordinator(...)" while
 * nothing was wrong, and an SRE who alerts on error lines learns to ignore them. Those responses go
 * to DEBUG here: kafkajs retries them, and if they persist its retries end in a thrown error
 * (KafkaJSNumberOfRetriesExceeded, a connection error) that the code which made the call logs. Which
 * errors are retriable is kafkajs's own table (src/protocol/error.js), not a list kept here; two more
 * are expected: REBALANCE_IN_PROGRESS on a heartbeat or commit at every rebalance (the consumer rejoins
 * and says so at WARN, "The group is rebalancing, re-joining"), and UNKNOWN_MEMBER_ID once a member
 * was expelled (it rejoins, and kafkajs's line saying so goes to WARN here).
 *
 * One warning goes to DEBUG as well: "Limiting retries for the idempotent producer may invalidate
 * EoS guarantees", printed by every producer we make. Bounded retries are deliberate: a produce that
 * fails after them fails the send (the client retries it with its client_msg_id, which dedupe makes
 * exactly-once at the platform's level, ADR 0001); Kafka transactions are not used.
 */
import { createRequire } from "node:module";
import { type LogEntry, logLevel } from "kafkajs";
import type { Logger } from "./log.js";

/**
 * Protocol errors kafkajs does not call retriable but handles itself, and logs again when it does:
 * a rebalance, and a member the coordinator expelled (its session ran out: a process frozen, starved
 * or killed and restarted with its old member id, kafka/member-resume.ts), which joins again.
 */
const HANDLED_BY_KAFKAJS = new Set(["REBALANCE_IN_PROGRESS", "UNKNOWN_MEMBER_ID"]);

/** kafkajs's own ERROR lines about what it handles by itself: an operator should see them, as warnings. */
const HANDLED_LINES = new Set(["The coordinator is not aware of this member, re-joining the group"]);

/** The messages of the protocol errors kafkajs retries or handles (see above). */
function retriableMessages(): ReadonlySet<string> {
  const require = createRequire(import.meta.url);
  const { errorCodes } = require("kafkajs/src/protocol/error.js") as {
    errorCodes: Array<{ type: string; message: string; retriable: boolean }>;
  };
  return new Set(
    errorCodes.filter((c) => c.retriable || HANDLED_BY_KAFKAJS.has(c.type)).map((c) => c.message),
  );
}

let retriable: ReadonlySet<string> | undefined;

const IDEMPOTENT_RETRIES_WARNING =
  "Limiting retries for the idempotent producer may invalidate EoS guarantees";

const LEVELS: Record<number, "error" | "warn" | "info" | "debug"> = {
  [logLevel.ERROR]: "error",
  [logLevel.WARN]: "warn",
  [logLevel.INFO]: "info",
  [logLevel.DEBUG]: "debug",
};

/** The level `entry` is logged at: kafkajs's own, except for the expected lines above. */
export function kafkajsLevel(entry: LogEntry): "error" | "warn" | "info" | "debug" {
  const { message, error } = entry.log as { message: string; error?: unknown };
  if (entry.level === logLevel.ERROR && message.startsWith("Response ") && typeof error === "string") {
    retriable ??= retriableMessages();
    if (retriable.has(error)) return "debug";
  }
  if (message === IDEMPOTENT_RETRIES_WARNING) return "debug";
  if (entry.level === logLevel.ERROR && HANDLED_LINES.has(message)) return "warn";
  return LEVELS[entry.level] ?? "info";
}

/** A kafkajs `logCreator` writing to `log` ("kafka: <message>", kafkajs's fields beside it). */
export function kafkajsLogCreator(log: Logger): () => (entry: LogEntry) => void {
  return () => (entry) => {
    const { message, ...rest } = entry.log;
    log[kafkajsLevel(entry)](`kafka: ${message}`, { namespace: entry.namespace, ...rest });
  };
}
