/**
 * The embedded platform on a disk with less free space than `dataDirFreeBytesMin`: new messages are
 * refused with a clear, retryable error and everything else keeps working — the process stays up.
 * Before, the first commit that failed for lack of space stopped the process, and a process restarted
 * on the full disk stopped again at the next send, disconnecting everyone each time. (A reserve
 * larger than any disk makes every real disk "nearly full"; the way back is in disk-space.test.ts and
 * embedded.test.ts, which can move the free space.)
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code } from "../../internal/lib/errors.js";
import { firstSampleOf, scrape } from "../helpers/metrics.js";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer } from "../helpers/server.js";

let server: ServerProcess;

beforeAll(async () => {
  server = await startServer({
    env: { SWITCHBOARD_DATA_DIR_FREE_BYTES_MIN: String(Number.MAX_SAFE_INTEGER) },
  });
});
afterAll(async () => {
  await server.dispose();
});

describe("a nearly full disk (embedded)", () => {
  it("refuses new messages with STORAGE_FULL, keeps the connection and the process, and serves everything else", async () => {
    const alice = await RawClient.connect(server.url, { token: await devToken(server.dataDir, "alice") });
    const send = (clientMsgId: string) =>
      alice.request({
        case: "send",
        value: { target: { case: "toUser", value: "bob" }, clientMsgId, body: "hi" },
      });
    const full = { reason: "STORAGE_FULL", code: Code.RESOURCE_EXHAUSTED, retryAfterMs: 5_000 };
    expect(expectCase(await send("a1"), "error")).toMatchObject(full);
    // Retryable, so it holds back the later sends to the conversation until it comes again (§2).
    expect(expectCase(await send("a2"), "error")).toMatchObject({ reason: "PREVIOUS_SEND_FAILED" });
    expect(expectCase(await send("a1"), "error")).toMatchObject(full);
    // Everything else goes on, on the reserve: a group change, a listing, a sync.
    const group = expectCase(
      await alice.request({ case: "createGroup", value: { name: "crew", members: ["bob"] } }),
      "conversation",
    ).conversation!;
    const listed = expectCase(await alice.request({ case: "listConversations", value: {} }), "conversations");
    expect(listed.conversations.map((c) => c.id)).toContain(group.id);
    expect(expectCase(await alice.request({ case: "sync", value: { cursor: 0n } }), "sync").messages).toEqual(
      [],
    );
    expect(alice.closeCode).toBeUndefined();
    expect(server.child.exitCode).toBeNull();

    const metrics = await scrape(server.httpUrl);
    expect(firstSampleOf(metrics, "switchboard_storage_full")).toBe(1);
    expect(firstSampleOf(metrics, "switchboard_storage_available_bytes")).toBeGreaterThan(0);
    expect(server.stderr()).toContain(
      "the data dir's disk is nearly full: new messages are refused (STORAGE_FULL)",
    );
    alice.close();
  });
});

describe("a write the disk refuses (embedded)", () => {
  // The database file may grow a little past its size at start (36 KiB): the first page it needs
  // beyond that fails to be written, as on a full disk (where the reserve above was used up by other
  // writes). At 40 KiB the first group's new record shape, stored synchronously inside its write, is
  // what fails; at 64 KiB a later group's commit, on LMDB's writer thread.
  it.each([40, 64])(
    "answers STORAGE_FAILED and stops cleanly (exit 70), with no rejection left unhandled (%i KiB)",
    async (limitKiB) => {
      const limited = await startServer({ fileSizeLimitKiB: limitKiB });
      const exited = new Promise<number | null>((resolve) =>
        limited.child.once("exit", (code) => resolve(code)),
      );
      try {
        const alice = await RawClient.connect(limited.url, {
          token: await devToken(limited.dataDir, "alice"),
        });
        const replies = [];
        for (let i = 0; i < 50 && limited.child.exitCode === null; i++) {
          const reply = await alice
            .request({ case: "createGroup", value: { name: `crew ${i}`, members: [`bob${i}`, `carol${i}`] } })
            .catch(() => undefined); // the process is stopping: the connection goes
          if (reply === undefined) break;
          replies.push(reply);
          if (reply.kind.case === "error") break;
        }
        // Whatever the first write to fail was (the first group's new record shape is saved
        // synchronously, inside the write), its caller hears of a storage failure, not an internal error.
        expect(expectCase(replies.at(-1)!, "error")).toMatchObject({
          reason: "STORAGE_FAILED",
          code: Code.UNAVAILABLE,
        });
        expect(await exited).toBe(70);
        expect(limited.stderr()).toContain("storage failed; shutting down");
        expect(limited.stderr()).not.toContain("unhandled promise rejection");
        alice.close();
      } finally {
        await limited.dispose();
      }
    },
  );
});
