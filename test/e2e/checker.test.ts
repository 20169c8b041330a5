import { describe, expect, it } from "vitest";
import { type CheckInput, checkHistory } from "./checker.js";

/** A run that kept every promise: a 1:1 of a and b with 3 messages, shown on a's and b's devices. */
function goodRun(): CheckInput {
  const rows = [1, 2, 3].map((seq) => ({
    conversationId: "dm:a~b",
    seq,
    messageId: `m${seq}`,
    body: `hello ${seq}`,
    sender: "a",
  }));
  const shown = rows.map(({ sender: _, ...r }) => r);
  return {
    sent: rows.map((r) => ({
      conversationId: r.conversationId,
      sender: "a",
      body: r.body,
      ack: { messageId: r.messageId, seq: r.seq },
    })),
    stored: new Map([["dm:a~b", rows]]),
    members: new Map([
      ["dm:a~b", new Set(["a", "b"])],
      ["dm:c~d", new Set(["c", "d"])],
    ]),
    devices: [
      { name: "a/1", userId: "a", shown: [...shown] },
      { name: "b/1", userId: "b", shown: [...shown] },
      { name: "c/1", userId: "c", shown: [] },
    ],
  };
}

const kinds = (input: CheckInput) => checkHistory(input).violations.map((v) => v.split(":")[0]);

describe("history checker", () => {
  it("passes a run that kept every promise, and counts what it checked", () => {
    const summary = checkHistory(goodRun());
    expect(summary.violations).toEqual([]);
    expect(summary).toMatchObject({ messagesAcked: 3, messagesStored: 3, deliveriesChecked: 6 });
  });

  it("finds an acked message that was lost, a gap, a duplicate, reordering, a foreign and an invented message", () => {
    const lost = goodRun();
    lost.stored.set("dm:a~b", lost.stored.get("dm:a~b")!.slice(0, 2));
    expect(kinds(lost)).toContain("acked but not stored");

    const gap = goodRun();
    gap.stored.get("dm:a~b")!.splice(1, 1);
    expect(kinds(gap)).toContain("seq gap");

    const twice = goodRun();
    twice.devices[1]!.shown.splice(1, 0, twice.devices[1]!.shown[0]!);
    expect(kinds(twice)).toContain("shown twice");

    const reordered = goodRun();
    reordered.devices[0]!.shown.reverse();
    expect(kinds(reordered)).toContain("out of order");

    const missed = goodRun();
    missed.devices[1]!.shown.pop();
    expect(kinds(missed)).toContain("not shown");

    const foreign = goodRun();
    foreign.devices[2]!.shown.push({ conversationId: "dm:a~b", seq: 1, messageId: "m1", body: "hello 1" });
    expect(kinds(foreign)).toContain("foreign");

    const invented = goodRun();
    invented.stored
      .get("dm:a~b")!
      .push({ conversationId: "dm:a~b", seq: 4, messageId: "m4", body: "?", sender: "x" });
    expect(kinds(invented)).toContain("invented");
  });
});
