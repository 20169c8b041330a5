/**
 * The example at the top of sdk/README.md is what apps copy: it runs here, as written, against the
 * fake gateway, twice (an app started, closed and started again), and must neither fail, nor show a
 * message twice, nor miss one, also with a large (pull-model) group whose messages have no inbox
 * position.
 */
import { readFileSync } from "node:fs";
import { transform } from "esbuild";
import { afterEach, expect, test } from "vitest";
import { FakeServer } from "../test/fake-server.js";
import {
  type ChatMessage,
  SwitchboardClient,
  SwitchboardClientError,
  type SwitchboardClientOptions,
} from "./index.js";

const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");

/** The README's first TypeScript block as the body of an async function (its import left out). */
async function example(): Promise<string> {
  const block = /```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  if (!block) throw new Error("sdk/README.md has no ```ts block");
  const source = block
    .split("\n")
    .filter((line) => !line.startsWith("import "))
    .join("\n");
  return (await transform(source, { loader: "ts", format: "esm" })).code;
}

type Run = (...globals: unknown[]) => Promise<void>;
const AsyncFunction = (async () => {}).constructor as new (...args: string[]) => Run;

let server: FakeServer | undefined;
const clients: SwitchboardClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await server?.close();
  server = undefined;
});

test("the README's example runs, and a restart from what it persisted repeats nothing and misses nothing", async () => {
  const srv = await FakeServer.start();
  server = srv;
  srv.addMessage("dm:alice~bob", "bob", "waiting in the inbox", ["alice", "bob"]);
  srv.groups.set("g:big", ["alice", "bob"]); // a large group: messages live with cursor 0, in no inbox
  srv.pull.add("g:big");

  // A pull message arrives at the end of each run, right before the ack of the example's last send.
  let rendered: ChatMessage[] = [];
  let pullExpected: string[] = [];
  srv.hook = (conn, frame, s) => {
    const k = frame.kind;
    if (
      k.case !== "send" ||
      k.value.target.case !== "conversationId" ||
      !k.value.target.value.startsWith("g:")
    )
      return undefined;
    const ack = s.store("alice", k.value.target.value, k.value.clientMsgId, k.value.body, [
      "alice",
      "bob",
      "carol",
    ]);
    const live = `live ${pullExpected.length + 1}`;
    pullExpected.push(live);
    s.addMessage("g:big", "bob", live, ["alice", "bob"]);
    const expected = [...pullExpected];
    // The ack once they are shown (or after 2 s: the assertions below then say what is missing).
    void s
      .waitFor(() => expected.every((b) => rendered.some((m) => m.body === b)), "the pull messages", 2_000)
      .catch(() => undefined)
      .then(() => s.reply(conn, frame, { case: "ack", value: ack }));
    return true;
  };

  const code = await example();
  const storage: Record<string, string> = {};
  const warnings: unknown[][] = [];
  const quiet = { log: () => {}, warn: (...args: unknown[]) => warnings.push(args) };
  class ReadmeClient extends SwitchboardClient {
    constructor(options: SwitchboardClientOptions) {
      super({ ...options, url: srv.url, reconnect: { baseMs: 5, maxMs: 20 } });
      clients.push(this);
    }
  }
  const run = () =>
    new AsyncFunction(
      "SwitchboardClient",
      "SwitchboardClientError",
      "fetchJwt",
      "render",
      "localStorage",
      "console",
      code,
    )(
      ReadmeClient,
      SwitchboardClientError,
      () => "token-alice",
      (m: ChatMessage) => rendered.push(m),
      storage,
      quiet,
    );

  await run();
  const first = rendered;
  expect(first.map((m) => m.body)).toEqual(["waiting in the inbox", "hi", "hello team", "live 1"]);
  expect(warnings).toEqual([]);

  // While the app is closed: a direct message, and two messages of the large group.
  srv.addMessage("dm:alice~bob", "bob", "while closed", ["alice", "bob"]);
  srv.addMessage("g:big", "bob", "while closed 1", ["alice", "bob"]);
  srv.addMessage("g:big", "bob", "while closed 2", ["alice", "bob"]);
  rendered = [];
  pullExpected = ["while closed 1", "while closed 2"];
  await run();
  const seen = new Set(first.map((m) => m.messageId));
  expect(rendered.filter((m) => seen.has(m.messageId))).toEqual([]); // nothing shown twice
  expect(rendered.map((m) => m.body).sort()).toEqual(
    ["while closed", "while closed 1", "while closed 2", "hi", "hello team", "live 3"].sort(),
  );
  const big = rendered.filter((m) => m.conversationId === "g:big").map((m) => m.body);
  expect(big).toEqual(["while closed 1", "while closed 2", "live 3"]); // in seq order
  expect(warnings).toEqual([]);
});
