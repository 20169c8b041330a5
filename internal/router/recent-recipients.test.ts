import { describe, expect, it } from "vitest";
import { RecentRecipients } from "./recent-recipients.js";

describe("RecentRecipients", () => {
  it("knows a user for at least one window and at most two, then forgets", () => {
    let now = 10_000;
    const recent = new RecentRecipients(1_000, () => now);
    recent.rotate();
    recent.add("bob");
    now += 999;
    expect(recent.has("bob")).toBe(true);
    now += 1; // a window old: kept as the previous generation
    expect(recent.has("bob")).toBe(true);
    expect(recent.has("dave")).toBe(false);
    now += 1_000; // that generation is now two windows old
    expect(recent.has("bob")).toBe(false);
  });

  it("after two windows of silence keeps nothing, and counts a new window from the next batch", () => {
    let now = 0;
    const recent = new RecentRecipients(1_000, () => now);
    recent.rotate();
    recent.add("bob");
    now = 2_500;
    recent.rotate();
    expect(recent.has("bob")).toBe(false);
    recent.add("carol");
    now = 3_400;
    expect(recent.has("carol")).toBe(true);
  });
});
