import { describe, expect, it } from "vitest";
import { directConversationId, directMembers, exceedsChars, isValidConversationId } from "./conversations.js";

describe("conversation ids", () => {
  it("derives one direct id from the two users in either order", () => {
    expect(directConversationId("bob", "alice")).toBe("dm:alice~bob");
    expect(directConversationId("alice", "bob")).toBe("dm:alice~bob");
    expect(directMembers("dm:alice~bob")).toEqual(["alice", "bob"]);
  });

  it("rejects malformed ids", () => {
    for (const id of [
      "",
      "dm:alice",
      "dm:a~b~c",
      "dm:al ice~bob",
      "g:",
      "g:12a",
      "group",
      `g:${"1".repeat(21)}`,
    ]) {
      expect(isValidConversationId(id)).toBe(false);
    }
    expect(isValidConversationId("g:382801613892354048")).toBe(true);
  });
});

describe("exceedsChars", () => {
  it("counts code points, not UTF-16 units", () => {
    expect(exceedsChars("😀".repeat(100_000), 100_000)).toBe(false);
    expect(exceedsChars("😀".repeat(100_001), 100_000)).toBe(true);
    expect(exceedsChars("x".repeat(100_000), 100_000)).toBe(false);
    expect(exceedsChars("x".repeat(100_001), 100_000)).toBe(true);
  });
});
