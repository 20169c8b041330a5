import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ReceiptSender } from "./receipts.js";

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("receipts", () => {
  it("coalesce a burst into the highest seq per conversation and kind, and never go back", async () => {
    const sent: string[] = [];
    const receipts = new ReceiptSender(async (kind, id, seq) => {
      sent.push(`${kind} ${id} ${seq}`);
    });
    receipts.mark("delivered", "c1", 1);
    receipts.mark("delivered", "c1", 3);
    receipts.mark("delivered", "c1", 2);
    receipts.mark("read", "c1", 2);
    await vi.advanceTimersByTimeAsync(200);
    expect(sent).toEqual(["delivered c1 3", "read c1 2"]);
    receipts.mark("delivered", "c1", 3);
    await vi.advanceTimersByTimeAsync(200);
    expect(sent).toHaveLength(2);
  });

  it("keep what failed to send and send it again when asked", async () => {
    let online = false;
    const sent: string[] = [];
    const receipts = new ReceiptSender(async (kind, id, seq) => {
      if (!online) throw new Error("not connected");
      sent.push(`${kind} ${id} ${seq}`);
    });
    receipts.mark("read", "c1", 4);
    await vi.advanceTimersByTimeAsync(200);
    expect(sent).toEqual([]);
    online = true;
    receipts.resendFailed();
    await vi.advanceTimersByTimeAsync(200);
    expect(sent).toEqual(["read c1 4"]);
    receipts.resendFailed(); // nothing left to resend
    await vi.advanceTimersByTimeAsync(200);
    expect(sent).toHaveLength(1);
  });

  it("forget what was sent, due or failed, also a receipt whose sending fails only after forget()", async () => {
    const sent: string[] = [];
    let fail: (err: Error) => void = () => {};
    const receipts = new ReceiptSender((kind, id, seq) => {
      sent.push(`${kind} ${id} ${seq}`);
      return new Promise<void>((_, reject) => {
        fail = reject;
      });
    });
    receipts.mark("read", "c1", 40);
    await vi.advanceTimersByTimeAsync(200);
    receipts.mark("read", "c1", 41); // due, not sent yet
    receipts.forget(); // the server was restored: seqs 40 and 41 may be other messages now
    fail(new Error("refused")); // the answer to the receipt sent before comes after
    await vi.advanceTimersByTimeAsync(200);
    receipts.resendFailed();
    await vi.advanceTimersByTimeAsync(200);
    expect(sent).toEqual(["read c1 40"]);
    // And a seq at or below the one sent before goes out again: it is another message's.
    receipts.mark("read", "c1", 3);
    await vi.advanceTimersByTimeAsync(200);
    expect(sent).toEqual(["read c1 40", "read c1 3"]);
  });
});
