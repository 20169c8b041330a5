/**
 * The client side of the `switchboard` command: send, listen and group create, built on the SDK so
 * the CLI exercises exactly what apps use. Output is one JSON object per line on stdout; a failure is
 * one JSON line on stderr and a non-zero exit code (2 = usage, 1 = anything else).
 */
import { parseArgs } from "node:util";
import { WebSocket } from "ws";
import {
  Code,
  randomId,
  SwitchboardClient,
  SwitchboardClientError,
  type SwitchboardClientOptions,
} from "../../sdk/src/index.js";

const DEFAULT_URL = "ws://127.0.0.1:8080/ws";
/** How long to wait for a connection or an answer before giving up. */
const TIMEOUT_MS = 10_000;

const COMMON = {
  url: { type: "string" },
  token: { type: "string" },
} as const;

class UsageError extends Error {}

export async function runClientCommand(command: string, argv: string[]): Promise<number> {
  try {
    switch (command) {
      case "send":
        return await runSend(argv);
      case "listen":
        return await runListen(argv);
      case "group":
        return await runGroup(argv);
      default:
        throw new UsageError(`unknown client command ${JSON.stringify(command)} (send, listen, group)`);
    }
  } catch (err) {
    printError(err);
    return isUsageError(err) ? 2 : 1;
  }
}

/** `send --token JWT (--to USER | --group ID) TEXT...` → the ack. */
async function runSend(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      ...COMMON,
      to: { type: "string" },
      group: { type: "string" },
      "client-msg-id": { type: "string" },
    },
    allowPositionals: true,
  });
  if ((values.to === undefined) === (values.group === undefined)) {
    throw new UsageError("give exactly one of --to USER or --group ID");
  }
  const text = positionals.join(" ");
  if (text === "") throw new UsageError("missing TEXT");
  // Send-only: no inbox sync (it could be the user's whole history).
  const client = newClient(values, { autoSync: false });
  // Named here so that a failed send prints it: run again with --client-msg-id it, a send that was
  // stored after all (a timeout) is answered as a duplicate, not stored twice.
  const clientMsgId = values["client-msg-id"] ?? randomId();
  try {
    await client.connect({ timeoutMs: TIMEOUT_MS });
    const target = values.to !== undefined ? { toUser: values.to } : { conversationId: values.group ?? "" };
    const ack = await client
      .send(target, text, { timeoutMs: TIMEOUT_MS, clientMsgId })
      .catch((err: unknown) => {
        throw Object.assign(err instanceof Error ? err : new Error(String(err)), { clientMsgId });
      });
    print({
      conversation: ack.conversationId,
      message_id: ack.messageId,
      seq: ack.seq,
      client_msg_id: ack.clientMsgId,
      duplicate: ack.duplicate,
    });
    return 0;
  } finally {
    await client.close();
  }
}

/**
 * `listen --token JWT [--since CURSOR] [--count N]`: syncs from the cursor, then prints live messages.
 * With --count it exits after N messages (synced + live; 0 = once connected), else on SIGINT.
 */
async function runListen(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { ...COMMON, since: { type: "string" }, count: { type: "string" } },
    allowPositionals: false,
  });
  const since = nonNegativeInt("--since", values.since ?? "0");
  const count = values.count === undefined ? undefined : nonNegativeInt("--count", values.count);
  const client = newClient(values, { cursor: since });

  return new Promise<number>((resolve) => {
    let printed = 0;
    let finished = false;
    const finish = (code: number, err?: unknown): void => {
      if (finished) return;
      finished = true;
      process.off("SIGINT", onSigint);
      if (err !== undefined) printError(err);
      void client.close().then(() => resolve(code));
    };
    const onSigint = (): void => finish(0);
    process.on("SIGINT", onSigint);

    client.on("message", ({ message, cursor }) => {
      if (finished) return;
      print({
        conversation: message.conversationId,
        seq: message.seq,
        message_id: message.messageId,
        from: message.sender,
        body: message.body,
        cursor,
        client_msg_id: message.clientMsgId,
        created_at_ms: message.createdAtMs,
      });
      printed++;
      if (count !== undefined && printed >= count) finish(0);
    });
    client.on("connected", () => {
      if (count === 0) finish(0); // nothing to print: just prove the connection works
    });
    // Transient outages are the SDK's business (it reconnects and resyncs); only terminal ones end us.
    client.on("error", (err) => {
      if (client.state === "closed") finish(1, err);
    });
    client.connect({ timeoutMs: TIMEOUT_MS }).catch((err: unknown) => finish(1, err));
  });
}

/** `group create --token JWT --name NAME [--member USER]... [--open]` → {"group": ID}. */
async function runGroup(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== "create") throw new UsageError(`unknown group command ${JSON.stringify(sub ?? "")} (create)`);
  const { values } = parseArgs({
    args: rest,
    options: {
      ...COMMON,
      name: { type: "string" },
      member: { type: "string", multiple: true },
      open: { type: "boolean" },
    },
    allowPositionals: false,
  });
  if (values.name === undefined || values.name === "") throw new UsageError("missing --name NAME");
  // Commas cannot occur in user ids, so "--member a,b" is accepted as a convenience.
  const members = (values.member ?? []).flatMap((m) => m.split(",")).filter((m) => m !== "");
  const client = newClient(values, { autoSync: false });
  try {
    await client.connect({ timeoutMs: TIMEOUT_MS });
    const group = await client.createGroup({ name: values.name, members, open: values.open ?? false });
    print({ group: group.id });
    return 0;
  } finally {
    await client.close();
  }
}

function newClient(
  values: { url?: string | undefined; token?: string | undefined },
  extra: Partial<SwitchboardClientOptions>,
): SwitchboardClient {
  const token = values.token ?? process.env.SWITCHBOARD_TOKEN;
  if (token === undefined || token === "") throw new UsageError("missing --token JWT");
  return new SwitchboardClient({
    url: values.url ?? process.env.SWITCHBOARD_URL ?? DEFAULT_URL,
    token,
    // Node: the `ws` package with the token in the Authorization header (never in the URL).
    WebSocket,
    auth: "header",
    requestTimeoutMs: TIMEOUT_MS,
    ...extra,
  });
}

function nonNegativeInt(flag: string, text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n))
    throw new UsageError(`${flag} must be a non-negative integer`);
  return n;
}

function print(obj: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function isUsageError(err: unknown): boolean {
  if (err instanceof UsageError) return true;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith("ERR_PARSE_ARGS");
}

function printError(err: unknown): void {
  const line: Record<string, unknown> = { error: err instanceof Error ? err.message : String(err) };
  if (err instanceof SwitchboardClientError) {
    line.reason = err.reason;
    line.code = Code[err.code] ?? err.code;
    if (err.retryAfterMs > 0) line.retry_after_ms = err.retryAfterMs;
  } else if (isUsageError(err)) {
    line.reason = "USAGE";
  }
  const clientMsgId = (err as { clientMsgId?: unknown } | null)?.clientMsgId;
  if (typeof clientMsgId === "string") line.client_msg_id = clientMsgId;
  process.stderr.write(`${JSON.stringify(line)}\n`);
}
