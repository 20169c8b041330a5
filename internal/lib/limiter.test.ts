import { describe, expect, it } from "vitest";
import { SendSlots } from "./send-slots.js";

describe("send slots", () => {
  it("keeps at most slotsMax sends in flight, serves waiters in order, and frees a slot on failure", async () => {
    const slots = new SendSlots(2);
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
    const results = await Promise.allSettled([send(1), send(2, true), send(3), send(4), send(5)]);
    expect(peak).toBe(2);
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
