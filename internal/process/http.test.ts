import { describe, expect, it } from "vitest";
import { connectionsCheckingIntervalMs } from "./http.js";

describe("the headers timeout", () => {
  it("is checked often enough to hold within a second (a tenth of it when shorter)", () => {
    expect(connectionsCheckingIntervalMs(10_000)).toBe(1_000);
    expect(connectionsCheckingIntervalMs(60_000)).toBe(1_000);
    expect(connectionsCheckingIntervalMs(2_000)).toBe(200);
    expect(connectionsCheckingIntervalMs(100)).toBe(50);
  });
});
