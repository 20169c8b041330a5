import { describe, expect, it } from "vitest";
import type { StoredMessage } from "../types.js";
import { CassandraMessageStore } from "./messages.js";
import type { Session, Statement } from "./session.js";
import { TurnWrites } from "./turn-writes.js";

/** A store over turn writes whose requests wait until the test lets them complete. */
function storeWithHeldWrites() {
  const requests: Array<{ seqs: number[]; done: () => void }> = [];
  const turnWrites = new TurnWrites(
    (what: string, statements: Statement[]) =>
      new Promise<void>((resolve) => {
        if (what.includes("marker")) return resolve();
        requests.push({ seqs: statements.map((s) => s.params[2] as number), done: resolve });
      }),
    { statementsMax: 200, bytesMax: 4 * 1024 },
  );
  const session = { table: (name: string) => name, turnWrites } as unknown as Session;
  return { store: new CassandraMessageStore(session), requests };
}

const row = (seq: number): StoredMessage => ({
  conversationId: "g:1",
  seq,
  messageId: String(100 + seq),
  sender: "a",
  clientMsgId: `c${seq}`,
  body: "x".repeat(100),
  createdAtMs: 1,
});
const tick = () => new Promise((r) => setTimeout(r, 20));

describe("message store writes", () => {
  it("one bucket's rows of one batch land in seq order: a cut goes out only after the one below it", async () => {
    const { store, requests } = storeWithHeldWrites();
    // Out of order on purpose: the store writes lower seqs first whatever the caller's order.
    const written = store.write([...Array.from({ length: 120 }, (_, i) => row(120 - i))], { fence: 5n });
    await tick();
    expect(requests.map((r) => [r.seqs[0], r.seqs.at(-1)])).toEqual([[1, 50]]);
    requests[0]!.done();
    await tick();
    expect(requests.map((r) => [r.seqs[0], r.seqs.at(-1)])).toEqual([
      [1, 50],
      [51, 100],
    ]);
    requests[1]!.done();
    await tick();
    expect(requests.length).toBe(3);
    expect([requests[2]!.seqs[0], requests[2]!.seqs.at(-1)]).toEqual([101, 120]);
    requests[2]!.done();
    await written;
  });

  it("conversations' rows still share requests", async () => {
    const { store, requests } = storeWithHeldWrites();
    const written = store.write([row(1), { ...row(1), conversationId: "g:2" }], { fence: 5n });
    await tick();
    expect(requests.length).toBe(1);
    expect(requests[0]!.seqs).toEqual([1, 1]);
    requests[0]!.done();
    await written;
  });
});
