import { describe, expect, it } from "vitest";
import { dropOldest } from "./drop-oldest.js";

describe("dropOldest", () => {
  it("forgets a Map's first-inserted key, one a re-insert made newest excepted", () => {
    const map = new Map([
      ["a", 1],
      ["b", 2],
      ["c", 3],
    ]);
    map.delete("a");
    map.set("a", 4);
    dropOldest(map);
    expect([...map]).toEqual([
      ["c", 3],
      ["a", 4],
    ]);
  });

  it("forgets a Set's first-inserted value", () => {
    const set = new Set(["a", "b"]);
    dropOldest(set);
    expect([...set]).toEqual(["b"]);
  });

  it("leaves an empty one empty, and a key that is undefined is still a key", () => {
    const empty = new Map<string, number>();
    dropOldest(empty);
    expect(empty.size).toBe(0);
    const withUndefined = new Set([undefined, "b"]);
    dropOldest(withUndefined);
    expect([...withUndefined]).toEqual(["b"]);
  });
});
