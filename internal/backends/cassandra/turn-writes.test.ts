import { describe, expect, it } from "vitest";
import type { Statement } from "./session.js";
import { cutUnits, routingKey, TurnWrites, type Unit, unitBytes } from "./turn-writes.js";

const st = (tag: string, bytes = 0): Statement => ({ query: `q ${tag}`, params: [tag, "x".repeat(bytes)] });
const unit = (tag: string, statements: number, bytes = 0): Statement[] =>
  Array.from({ length: statements }, (_, i) => st(`${tag}${i}`, bytes));
/** A unit of partition `tag` (its routing key is the tag). */
const part = (tag: string, statements: number): Unit => ({
  key: routingKey(tag),
  statements: unit(tag, statements),
});

describe("cutUnits", () => {
  it("keeps every unit whole, fills batches up to both limits, and sends an oversized unit alone", () => {
    const limits = { statementsMax: 5, bytesMax: 1000 };
    const units = [
      unit("a", 2),
      unit("b", 3),
      unit("c", 1),
      unit("big", 1, 2000),
      unit("d", 1),
      unit("e", 6),
    ];
    expect(cutUnits(units, limits)).toEqual([[0, 1], [2], [3], [4], [5]]);
  });

  it("cuts by bytes as well as by statements", () => {
    const units = [unit("a", 1, 300), unit("b", 1, 300), unit("c", 1, 300), unit("d", 1, 300)];
    const limits = { statementsMax: 100, bytesMax: 2 * unitBytes(units[0]!) };
    expect(cutUnits(units, limits)).toEqual([
      [0, 1],
      [2, 3],
    ]);
  });
});

describe("routingKey", () => {
  it("is the column's bytes for one column, and length, bytes and a zero byte per column for several", () => {
    expect(routingKey("ab")).toEqual(Buffer.from("ab"));
    expect(routingKey("é", 2n)).toEqual(Buffer.from([0, 2, 0xc3, 0xa9, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 2, 0]));
  });
});

describe("TurnWrites", () => {
  it("merges the writes of one turn into few requests; the next turn's writes go in requests of their own", async () => {
    const sent: string[][] = [];
    const writes = new TurnWrites(
      async (_what, statements) => sent.push(statements.map((s) => s.params[0] as string)),
      { statementsMax: 3, bytesMax: 10_000 },
    );
    await Promise.all([writes.write("x", [part("a", 1), part("b", 1)]), writes.write("y", [part("c", 2)])]);
    expect(sent).toEqual([
      ["a0", "b0"],
      ["c0", "c1"],
    ]);
    await writes.write("z", [part("d", 1)]);
    expect(sent.at(-1)).toEqual(["d0"]);
    expect(writes.counts).toEqual({ writes: 3, requests: 3 });
  });

  it("a failed request fails the writes that had a unit in it, and only those", async () => {
    const writes = new TurnWrites(
      async (_what, statements) => {
        if (statements.some((s) => s.params[0] === "bad0")) throw new Error("node refused");
      },
      { statementsMax: 2, bytesMax: 10_000 },
    );
    const [first, second, third] = await Promise.allSettled([
      writes.write("ok", [part("a", 2)]),
      writes.write("spans", [part("b", 1), part("bad", 1)]),
      writes.write("after", [part("c", 1)]),
    ]);
    // Requests: [a0 a1], [b0 bad0], [c0]. "b" shared the failed request; "a" and "c" did not.
    expect(first.status).toBe("fulfilled");
    expect(second).toMatchObject({ status: "rejected", reason: { message: "node refused" } });
    expect(third.status).toBe("fulfilled");
  });

  it("only partitions on the same replicas share a request", async () => {
    const sent: string[][] = [];
    // Partitions a* live on one replica set, b* on another.
    const writes = new TurnWrites(
      async (_what, statements) => sent.push(statements.map((s) => s.params[0] as string)),
      { statementsMax: 10, bytesMax: 10_000 },
      (key) => key.toString("utf8").charAt(0),
    );
    await Promise.all([
      writes.write("x", [part("a1", 1), part("b1", 1)]),
      writes.write("y", [part("a2", 1), part("b2", 1)]),
    ]);
    expect(sent).toEqual([
      ["a10", "a20"],
      ["b10", "b20"],
    ]);
  });

  it("a write of nothing resolves at once and sends nothing", async () => {
    let requests = 0;
    const writes = new TurnWrites(async () => requests++, { statementsMax: 2, bytesMax: 10_000 });
    await writes.write("nothing", [part("a", 0), part("b", 0)]);
    expect(requests).toBe(0);
  });
});
