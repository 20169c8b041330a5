import { describe, expect, it } from "vitest";
import { Limiter } from "./limiter.js";

describe("limiter", () => {
  it("keeps at most max calls in flight, serves waiters in order, and frees a place on failure", async () => {
    const slots = new Limiter(2);
    let inFlight = 0;
    let peak = 0;
    const order: number[] = [];
    const send = (i: number, fail = false) =>
      slots.run(async () => {
        inFlight++;
        peak = Math.max(peak, inFlight);
        await new Promise((r) => setTimeout(r, 5));
        inFlight--;
        order.push(i);
        if (fail) throw new Error(`send ${i} failed`);
        return i;
      });
    const settled = Promise.allSettled([send(1), send(2, true), send(3), send(4), send(5)]);
    expect(slots.waiting).toBe(3);
    const results = await settled;
    expect(peak).toBe(2);
    expect(slots.waiting).toBe(0);
    expect(order).toEqual([1, 2, 3, 4, 5]);
    expect(results.map((r) => r.status)).toEqual([
      "fulfilled",
      "rejected",
      "fulfilled",
      "fulfilled",
      "fulfilled",
    ]);
    expect(await send(6)).toBe(6); // every slot came back
  });
});
