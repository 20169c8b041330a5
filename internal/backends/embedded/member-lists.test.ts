import { describe, expect, it } from "vitest";
import { MemberLists } from "./member-lists.js";

describe("MemberLists", () => {
  it("hands out copies: a caller sorting or emptying its list does not change the cached one", () => {
    const lists = new MemberLists(10);
    const source = ["b", "a"];
    lists.set("c1", source);
    source.push("x");
    const first = lists.get("c1")!;
    first.sort();
    first.length = 0;
    expect(lists.get("c1")).toEqual(["b", "a"]);
  });

  it("forget drops a list and what it held", () => {
    const lists = new MemberLists(10);
    lists.set("c1", ["a", "b"]);
    lists.set("c2", ["c"]);
    lists.forget("c1");
    lists.forget("never-cached");
    expect(lists.get("c1")).toBeUndefined();
    expect(lists.get("c2")).toEqual(["c"]);
    expect(lists.size).toBe(1);
  });

  it("holds at most membersMax members, evicting the least recently used conversations", () => {
    const lists = new MemberLists(5);
    lists.set("c1", ["a", "b"]);
    lists.set("c2", ["c", "d"]);
    lists.get("c1"); // c1 is now the most recently used
    lists.set("c3", ["e", "f"]);
    expect(lists.size).toBe(4);
    expect(lists.get("c2")).toBeUndefined();
    expect(lists.get("c1")).toEqual(["a", "b"]);
    expect(lists.get("c3")).toEqual(["e", "f"]);
  });

  it("a list longer than the bound is not cached and evicts nothing", () => {
    const lists = new MemberLists(3);
    lists.set("small", ["a"]);
    lists.set("huge", ["a", "b", "c", "d"]);
    expect(lists.get("huge")).toBeUndefined();
    expect(lists.get("small")).toEqual(["a"]);
    expect(lists.size).toBe(1);
  });

  it("setting a conversation again replaces its list and its count", () => {
    const lists = new MemberLists(10);
    lists.set("c1", ["a", "b", "c"]);
    lists.set("c1", ["a"]);
    expect(lists.size).toBe(1);
    expect(lists.get("c1")).toEqual(["a"]);
  });
});
