import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { CheckpointStore, Outbox } from "./local-store.js";

/** localStorage, shared by the "tabs" of a test as by those of an origin. */
class MemoryStorage {
  readonly items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
  removeItem(key: string): void {
    this.items.delete(key);
  }
  get length(): number {
    return this.items.size;
  }
  key(index: number): string | null {
    return [...this.items.keys()][index] ?? null;
  }
}

let storage: MemoryStorage;
beforeEach(() => {
  storage = new MemoryStorage();
  vi.stubGlobal("localStorage", storage);
});
afterEach(() => {
  vi.unstubAllGlobals();
});

describe("CheckpointStore", () => {
  it("keeps the inbox cursor and the large groups' positions, for the next start", () => {
    const store = new CheckpointStore("https://chat", "alice");
    expect(store.load()).toBeUndefined(); // a device new to the user
    store.start(40, "ds-1"); // the inbox head, of the server's data set
    expect(store.load()).toEqual({ cursor: 40, pullPositions: {}, dataSet: "ds-1" });
    store.save({ cursor: 42, pullPositions: { "g:big": 7, "dm:alice~bob": 3 } });
    expect(new CheckpointStore("https://chat", "alice").load()).toEqual({
      cursor: 42,
      pullPositions: { "g:big": 7, "dm:alice~bob": 3 },
      dataSet: "ds-1",
    });
    // Another user's, or another server's, is another store.
    expect(new CheckpointStore("https://chat", "bob").load()).toBeUndefined();
    expect(new CheckpointStore("https://other", "alice").load()).toBeUndefined();
  });

  it("never moves a value back: a tab behind another keeps what the other saved", () => {
    const ahead = new CheckpointStore("https://chat", "alice");
    const behind = new CheckpointStore("https://chat", "alice");
    ahead.start(0, "");
    ahead.save({ cursor: 9, pullPositions: { "g:a": 5, "g:b": 2 } });
    behind.save({ cursor: 4, pullPositions: { "g:a": 3, "g:b": 6, "g:c": 1 } });
    // A pull message leaves the cursor where it was: never 0 because of it.
    behind.save({ cursor: 0, pullPositions: { "g:c": 2 } });
    expect(ahead.load()).toEqual({ cursor: 9, pullPositions: { "g:a": 5, "g:b": 6, "g:c": 2 } });
  });

  it("takes the positions of another data set (a restored server) in place of the stored ones", () => {
    const tab = new CheckpointStore("https://chat", "alice");
    tab.start(0, "");
    tab.save({ cursor: 30, pullPositions: { "g:a": 20 } }); // from a server naming no data set
    tab.save({ cursor: 31, pullPositions: {}, dataSet: "ds-1" }); // first named: the same data
    expect(tab.load()).toEqual({ cursor: 31, pullPositions: { "g:a": 20 }, dataSet: "ds-1" });
    // Restored: the SDK started over from 0 on ds-2; its lower positions are the ones to keep.
    tab.save({ cursor: 4, pullPositions: { "g:b": 2 }, dataSet: "ds-2" });
    expect(tab.load()).toEqual({ cursor: 4, pullPositions: { "g:b": 2 }, dataSet: "ds-2" });
    tab.save({ cursor: 3, pullPositions: { "g:b": 1 }, dataSet: "ds-2" }); // a tab behind, same data
    expect(tab.load()).toEqual({ cursor: 4, pullPositions: { "g:b": 2 }, dataSet: "ds-2" });
  });

  it("reads the cursor an earlier version stored, and ignores what is not a position", () => {
    storage.setItem("switchboard:cursor:https://chat:alice", "17"); // as open-chat.ts kept it before
    storage.setItem("switchboard:pull:https://chat:alice", '{"g:a":3,"g:b":"x","g:c":-1,"g:d":1.5}');
    expect(new CheckpointStore("https://chat", "alice").load()).toEqual({
      cursor: 17,
      pullPositions: { "g:a": 3 },
    });
    storage.setItem("switchboard:cursor:https://chat:alice", "NaN");
    expect(new CheckpointStore("https://chat", "alice").load()).toBeUndefined(); // started again at the head
  });
});

describe("Outbox", () => {
  const entry = (clientMsgId: string, createdAtMs: number) => ({
    conversationId: "dm:alice~bob",
    clientMsgId,
    body: `body of ${clientMsgId}`,
    createdAtMs,
  });

  it("keeps each message in an item of its own, so one tab's write cannot drop another's", () => {
    const tab1 = new Outbox("https://chat", "alice");
    const tab2 = new Outbox("https://chat", "alice");
    tab1.add(entry("b", 2));
    tab2.add(entry("a", 1));
    tab1.remove("b");
    tab2.add(entry("c", 3));
    expect(tab1.entries().map((e) => e.clientMsgId)).toEqual(["a", "c"]);
    expect([...storage.items.keys()].sort()).toEqual([
      "switchboard:outbox:https://chat:alice|a",
      "switchboard:outbox:https://chat:alice|c",
    ]);
    // Another user's is apart, also one whose id begins with this one's, and clearing one user's
    // leaves theirs.
    const others = [new Outbox("https://chat", "bob"), new Outbox("https://chat", "alice:work")];
    for (const other of others) other.add(entry("x", 1));
    expect(tab1.entries().map((e) => e.clientMsgId)).toEqual(["a", "c"]);
    tab2.clear();
    expect([tab1.entries(), ...others.map((o) => o.entries().map((e) => e.clientMsgId))]).toEqual([
      [],
      ["x"],
      ["x"],
    ]);
  });

  it("takes in the list an earlier version stored, and ignores what is not a message", () => {
    storage.setItem(
      "switchboard:outbox:https://chat:alice",
      JSON.stringify([entry("old2", 20), { clientMsgId: "broken" }, entry("old1", 10)]),
    );
    const outbox = new Outbox("https://chat", "alice");
    expect(outbox.entries().map((e) => e.clientMsgId)).toEqual(["old1", "old2"]);
    expect(storage.getItem("switchboard:outbox:https://chat:alice")).toBeNull();
    outbox.remove("old1");
    expect(outbox.entries().map((e) => e.clientMsgId)).toEqual(["old2"]);
  });
});
