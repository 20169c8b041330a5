/**
 * Structured logging: one JSON object per line on stderr (stdout belongs to CLI output).
 * Never log tokens or message bodies.
 */
import { activeTraceFields, tracing } from "./tracing.js";

export type Level = "debug" | "info" | "warn" | "error";
const order: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

const isLevel = (v: string | undefined): v is Level => v !== undefined && Object.hasOwn(order, v);
/**
 * Until the configuration is loaded (which validates log.level and calls setLogLevel), the variable
 * as it is; a value that is not a level counts as info here, and loading the configuration fails on it.
 */
let minLevel: Level = isLevel(process.env.SWITCHBOARD_LOG_LEVEL) ? process.env.SWITCHBOARD_LOG_LEVEL : "info";

export function setLogLevel(level: Level): void {
  minLevel = level;
}

function serialiseError(err: unknown): unknown {
  if (!(err instanceof Error)) return err;
  const out: Record<string, unknown> = { name: err.name, message: err.message };
  if (err.cause !== undefined) out.cause = serialiseError(err.cause);
  if (err.stack) out.stack = err.stack;
  return out;
}

export function createLogger(base: Record<string, unknown> = {}): Logger {
  const write = (level: Level, msg: string, fields?: Record<string, unknown>) => {
    if (order[level] < order[minLevel]) return;
    const record: Record<string, unknown> = { time: new Date().toISOString(), level, msg, ...base };
    if (tracing.on) Object.assign(record, activeTraceFields());
    if (fields) for (const [k, v] of Object.entries(fields)) record[k] = k === "err" ? serialiseError(v) : v;
    process.stderr.write(`${JSON.stringify(record)}\n`);
  };
  return {
    debug: (m, f) => write("debug", m, f),
    info: (m, f) => write("info", m, f),
    warn: (m, f) => write("warn", m, f),
    error: (m, f) => write("error", m, f),
    child: (fields) => createLogger({ ...base, ...fields }),
  };
}

/** A logger that writes nothing: for unit tests that provoke failures on purpose. */
export function discardingLogger(): Logger {
  const discard = () => undefined;
  const logger: Logger = {
    debug: discard,
    info: discard,
    warn: discard,
    error: discard,
    child: () => logger,
  };
  return logger;
}
