import { afterEach, beforeEach, expect, test, vi } from "vitest";
import { FakeServer } from "../../sdk/test/fake-server.js";
import { runClientCommand } from "./client-commands.js";

let server: FakeServer;
let out: string[];
let err: string[];

beforeEach(async () => {
  server = await FakeServer.start({ syncPageSize: 2 });
  out = [];
  err = [];
  vi.spyOn(process.stdout, "write").mockImplementation((chunk) => {
    out.push(String(chunk));
    return true;
  });
  vi.spyOn(process.stderr, "write").mockImplementation((chunk) => {
    err.push(String(chunk));
    return true;
  });
});

afterEach(async () => {
  vi.restoreAllMocks();
  await server.close();
});

const lines = (chunks: string[]) =>
  chunks
    .join("")
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l) as Record<string, unknown>);

test("send prints the ack as one JSON line with snake_case keys", async () => {
  const code = await runClientCommand("send", [
    "--url",
    server.url,
    "--token",
    "token-alice",
    "--to",
    "bob",
    "hello",
    "bob",
  ]);
  expect(err).toEqual([]);
  expect(code).toBe(0);
  const [ack, ...more] = lines(out);
  expect(more).toEqual([]);
  expect(ack).toMatchObject({ conversation: "dm:alice~bob", seq: 1, duplicate: false });
  expect(Object.keys(ack!).sort()).toEqual([
    "client_msg_id",
    "conversation",
    "duplicate",
    "message_id",
    "seq",
  ]);
  expect(server.framesOf("send")[0]!.value.body).toBe("hello bob");
  expect(server.framesOf("sync")).toHaveLength(0); // send-only: no inbox sync
  expect(server.conns[0]!.token).toBe("token-alice"); // Authorization header, not the URL
});

test("group create prints the group id; send --group then works", async () => {
  expect(
    await runClientCommand("group", [
      "create",
      "--url",
      server.url,
      "--token",
      "token-alice",
      "--name",
      "team",
      "--member",
      "bob",
      "--member",
      "carol,dave",
    ]),
  ).toBe(0);
  const [{ group }] = lines(out) as [{ group: string }];
  expect(group).toBe("g:1");
  expect(server.framesOf("createGroup")[0]!.value).toMatchObject({
    name: "team",
    members: ["bob", "carol", "dave"],
  });

  out.length = 0;
  expect(
    await runClientCommand("send", [
      "--url",
      server.url,
      "--token",
      "token-bob",
      "--group",
      group,
      "hi team",
    ]),
  ).toBe(0);
  expect(lines(out)[0]).toMatchObject({ conversation: "g:1", seq: 1 });
});

test("listen syncs from --since, then prints live messages, and exits after --count", async () => {
  for (let i = 1; i <= 4; i++) server.addMessage("g:1", "bob", `m${i}`, ["alice", "bob"]);
  const done = runClientCommand("listen", [
    "--url",
    server.url,
    "--token",
    "token-alice",
    "--since",
    "1",
    "--count",
    "4",
  ]);
  await server.waitFor(() => server.openConns().some((c) => c.live), "listener synced");
  server.addMessage("g:1", "bob", "m5", ["alice", "bob"]);
  server.addMessage("g:1", "bob", "m6", ["alice", "bob"]); // beyond --count: not printed
  expect(await done).toBe(0);
  expect(err).toEqual([]);
  const got = lines(out);
  expect(got.map((l) => [l.body, l.cursor, l.from, l.conversation, l.seq])).toEqual([
    ["m2", 2, "bob", "g:1", 2],
    ["m3", 3, "bob", "g:1", 3],
    ["m4", 4, "bob", "g:1", 4],
    ["m5", 5, "bob", "g:1", 5],
  ]);
  expect(typeof got[0]!.message_id).toBe("string");
  expect(server.framesOf("sync").map((f) => Number(f.value.cursor))).toEqual([1, 3]);
});

test("listen --count 0 exits once connected, printing nothing", async () => {
  server.addMessage("g:1", "bob", "m1", ["alice", "bob"]);
  expect(
    await runClientCommand("listen", ["--url", server.url, "--token", "token-alice", "--count", "0"]),
  ).toBe(0);
  expect(lines(out)).toEqual([]);
});

test("errors are one JSON line on stderr with a non-zero exit", async () => {
  expect(
    await runClientCommand("send", ["--url", server.url, "--token", "token-alice", "--group", "g:9", "x"]),
  ).toBe(1);
  // A failed send names its client_msg_id, to retry it with --client-msg-id (stored at most once).
  expect(lines(err)).toEqual([
    expect.objectContaining({
      reason: "NOT_MEMBER",
      code: "PERMISSION_DENIED",
      client_msg_id: expect.stringMatching(/.+/),
    }),
  ]);
  expect(out).toEqual([]);

  err.length = 0;
  expect(await runClientCommand("send", ["--url", server.url, "--token", "bad", "--to", "bob", "x"])).toBe(1);
  expect(lines(err)).toEqual([expect.objectContaining({ reason: "INVALID_TOKEN" })]);

  err.length = 0;
  expect(await runClientCommand("listen", ["--url", server.url, "--token", "bad"])).toBe(1);
  expect(lines(err)).toEqual([expect.objectContaining({ reason: "INVALID_TOKEN" })]);

  err.length = 0;
  expect(await runClientCommand("send", ["--url", server.url, "--token", "token-alice", "x"])).toBe(2);
  expect(await runClientCommand("send", ["--token", "t", "--bogus", "--to", "b", "x"])).toBe(2);
  expect(await runClientCommand("group", ["delete"])).toBe(2);
  expect(await runClientCommand("listen", ["--token", "t", "--since", "-1"])).toBe(2);
  expect(lines(err)).toHaveLength(4);
  expect(lines(err).every((l) => typeof l.error === "string" && l.reason === "USAGE")).toBe(true);
});
