#!/usr/bin/env node
/** The `switchboard` command: a thin dispatcher; each command lives in internal/cli. */
import { isControlConnectionRace } from "../internal/backends/cassandra/driver-races.js";
import { isLmdbCommitRejection } from "../internal/backends/embedded/lmdb-orphans.js";
import {
  closeRunning,
  runBackup,
  runConfig,
  runGrpcKey,
  runProvision,
  runSequencer,
  runStart,
  runToken,
} from "../internal/cli/server-commands.js";

const USAGE = `usage: switchboard <command> [options]
  start [--role R] [--port N] [--host H] [--data-dir DIR] [--grpc-port N] [--backend B] [--dev]
                                                      run one role (gateway, router, presence, push, id,
                                                      sequencer) or all of them in one process (default);
                                                      --dev: dev mode, GET /v1/dev/token mints tokens for
                                                      anyone on a loopback port (npm start uses it)
  provision                                           create the Kafka topics and Cassandra schema
  token --user ID [--data-dir DIR] [--ttl 1h]        print a dev JWT
  backup --out FILE [--data-dir DIR]                  copy the embedded database while the server runs
                                                      (restore: stop, put FILE in as DIR/switchboard.mdb)
  grpc-key --principal P                              print a new gRPC key for P (role:<role>, operator,
                                                      client:<name>) and its grpc.keyFile line
  send --token JWT (--to USER | --group ID) TEXT     send a message, print the ack; --client-msg-id ID
                                                      to retry a send that failed (its error prints the id)
  listen --token JWT [--since CURSOR] [--count N]    sync, then print live messages
  group create --token JWT --name NAME [--member U]  create a group
  sequencer                                           the same as start --role sequencer
  operator [--http-port N] [--lease-namespace NS]     run the ChatCluster operator (current KUBECONFIG)
  config docs                                         print the configuration reference
  version                                             print this build's version and Node.js's (JSON)`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "start":
      return runStart(rest);
    case "token":
      return runToken(rest);
    case "sequencer":
      return runSequencer(rest);
    case "provision":
      return runProvision(rest);
    case "backup":
      return runBackup(rest);
    case "config":
      return runConfig(rest);
    case "version":
    case "--version": {
      const { BUILD_VERSION } = await import("../internal/lib/build-info.js");
      process.stdout.write(`${JSON.stringify({ version: BUILD_VERSION, node: process.versions.node })}\n`);
      return 0;
    }
    case "grpc-key":
      return runGrpcKey(rest);
    case "operator": {
      const { runOperator } = await import("../operator/main.js");
      return runOperator(rest);
    }
    case "send":
    case "listen":
    case "group": {
      const { runClientCommand } = await import("../internal/cli/client-commands.js");
      return runClientCommand(command, rest);
    }
    default:
      process.stderr.write(`${USAGE}\n`);
      return command === undefined || command === "help" || command === "--help" ? 0 : 2;
  }
}

/** EX_SOFTWARE: the process stopped on a bug of its own, as after a storage failure (runtime.ts). */
const FATAL_EXIT_CODE = 70;

function errorFields(err: unknown): unknown {
  if (!(err instanceof Error)) return { message: String(err) };
  return {
    name: err.name,
    message: err.message,
    ...(err.stack ? { stack: err.stack } : {}),
    ...(err.cause !== undefined ? { cause: errorFields(err.cause) } : {}),
  };
}

/**
 * The output streams can go away under a running process: whatever reads them exits (a pipe to a
 * tool that quit, a test harness that died) or restarts (journald). Each write then fails with EPIPE,
 * and that error, unhandled, is an uncaught exception whose report is written to the same dead
 * stream, failing again: a loop that held a core at 100 % and kept a stopping process from ever
 * exiting. For a server (start, sequencer, operator) a broken log stream is not its failure: what is
 * written to it from then on is dropped and it goes on. Any other command's output is its purpose,
 * so it ends there, as a command whose reader quit does (`switchboard listen | head -1`).
 */
const SERVER_COMMANDS = new Set(["start", "sequencer", "operator"]);
const serving = SERVER_COMMANDS.has(process.argv[2] ?? "");
for (const stream of [process.stdout, process.stderr])
  stream.on("error", () => {
    if (!serving) process.exit(process.exitCode ?? 0);
  });

/** One log line of this entry point's own, whatever log.level says (the loggers are not set up here). */
function logLine(level: "warn" | "error" | "fatal", msg: string, err: unknown): void {
  process.stderr.write(
    `${JSON.stringify({ time: new Date().toISOString(), level, msg, pid: process.pid, err: errorFields(err) })}\n`,
  );
}

/**
 * Node prints its process warnings (a deprecation in a dependency, a listener leak such as
 * cassandra-driver's on reconnects) as plain text on stderr; a server's log is one JSON object per
 * line, so its warnings are written as log lines instead (level warn), and nothing else.
 */
if (serving) {
  process.removeAllListeners("warning");
  process.on("warning", (warning) => logLine("warn", `node: ${warning.name}`, warning));
}

let failing = false;
/**
 * An exception nothing caught, or a rejection nothing handled: the process's state is unknown, so it
 * stops. One structured line (whatever log.level says), then what `start` runs is closed within
 * shutdownTimeoutMs (clients told 1001, storage flushed), then exit 70, so a supervisor restarts it.
 */
function fatal(what: string, err: unknown): void {
  logLine("fatal", what, err);
  if (failing) return;
  failing = true;
  process.exitCode = FATAL_EXIT_CODE;
  void closeRunning()
    .catch(() => undefined)
    .finally(() => process.exit(FATAL_EXIT_CODE));
}
process.on("uncaughtException", (err) => fatal("uncaught exception; stopping", err));
process.on("unhandledRejection", (reason) => {
  if (isControlConnectionRace(reason))
    return logLine(
      "error",
      "cassandra-driver: a refresh of its control connection failed beside another (a race of the driver's); it reconnects by itself",
      reason,
    );
  // A failed commit stops the process through the writes' own promises first (exit 70 set); lmdb-js's
  // own promises of that commit are then no news. Before that, they stop it like any other.
  if (isLmdbCommitRejection(reason) && process.exitCode === FATAL_EXIT_CODE)
    return logLine(
      "error",
      "lmdb: the failed commit's own promise (the process is already stopping for it)",
      reason,
    );
  fatal("unhandled promise rejection; stopping", reason);
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    // A refusal of the platform's own (DATA_DIR_IN_USE, DATA_DIR_FULL, …) also gives its reason.
    const reason = (err as { reason?: unknown } | null)?.reason;
    process.stderr.write(
      `${JSON.stringify({ error: err instanceof Error ? err.message : String(err), ...(typeof reason === "string" ? { reason } : {}) })}\n`,
    );
    process.exitCode = 1;
  },
);
