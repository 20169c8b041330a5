import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  TYPING_IDLE_MS,
  TYPING_RENEW_MS,
  TYPING_SHOWN_MS,
  TypingSender,
  TypingWatcher,
  typingLine,
} from "./typing.js";

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("typing", () => {
  it("the typist renews while typing and says it stopped after a pause, on send, or on leaving", () => {
    const sent: Array<[string, boolean]> = [];
    const sender = new TypingSender((id, typing) => sent.push([id, typing]));
    sender.keystroke("c1");
    sender.keystroke("c1");
    expect(sent).toEqual([["c1", true]]);
    vi.advanceTimersByTime(TYPING_RENEW_MS);
    sender.keystroke("c1");
    expect(sent).toEqual([
      ["c1", true],
      ["c1", true],
    ]);
    vi.advanceTimersByTime(TYPING_IDLE_MS);
    expect(sent.at(-1)).toEqual(["c1", false]);
    sender.keystroke("c1");
    sender.stop();
    expect(sent.slice(-2)).toEqual([
      ["c1", true],
      ["c1", false],
    ]);
    sender.stop(); // nothing to stop: nothing sent
    expect(sent).toHaveLength(5);
    sender.keystroke("c1");
    sender.keystroke("c2"); // moved to another conversation
    expect(sent.slice(-3)).toEqual([
      ["c1", true],
      ["c1", false],
      ["c2", true],
    ]);
  });

  it("a watcher shows typists until they stop, send, or go quiet", () => {
    const changed: string[] = [];
    const watcher = new TypingWatcher((id) => changed.push(id));
    watcher.update("c1", "bob", true);
    watcher.update("c1", "alice", true);
    expect(watcher.typing("c1")).toEqual(["alice", "bob"]);
    expect(typingLine(watcher.typing("c1"))).toBe("alice and bob are typing…");
    watcher.messageFrom("c1", "bob");
    expect(watcher.typing("c1")).toEqual(["alice"]);
    expect(typingLine(watcher.typing("c1"))).toBe("alice is typing…");
    vi.advanceTimersByTime(TYPING_SHOWN_MS - 1);
    expect(watcher.typing("c1")).toEqual(["alice"]);
    vi.advanceTimersByTime(1);
    expect(watcher.typing("c1")).toEqual([]);
    expect(typingLine([])).toBe("");
    const before = changed.length;
    watcher.update("c1", "carol", false); // was not typing: nothing changes
    expect(changed).toHaveLength(before);
  });
});
