/**
 * ChatApp against a fake SDK client: what it asks the server, and what it keeps, when the server's
 * answers are not the simple ones (long conversation lists, refusals, a connection that ends).
 */
import { webcrypto } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  type ChatMessage,
  type Checkpoint,
  Code,
  type Conversation,
  type HistoryPage,
  type HistoryQuery,
  type MemberList,
  type PresenceStatus,
  type SendAck,
  type SendOptions,
  type SwitchboardClient,
  SwitchboardClientError,
  type SwitchboardClientEvents,
  TypedEmitter,
} from "../../sdk/src/index.js";
import { ChatApp, CONVERSATIONS_LISTED, EXPIRED_TEXT, KEPT_TEXT, noticeOf } from "./chat-app.js";
import { Outbox } from "./local-store.js";

const ME = "alice";

function conversation(id: string, createdAtMs: number, lastSeq = 0): Conversation {
  return {
    id,
    kind: id.startsWith("g:") ? "group" : "direct",
    name: id,
    owner: "",
    memberCount: 2,
    open: false,
    lastSeq,
    createdAtMs,
    readSeq: 0,
    postPolicy: "everyone",
    addPolicy: "everyone",
    delivery: "push",
    version: 1,
  };
}

function message(conversationId: string, seq: number, sender: string): ChatMessage {
  return {
    conversationId,
    seq,
    messageId: String(seq),
    sender,
    clientMsgId: `c${seq}`,
    body: `m${seq}`,
    createdAtMs: seq,
  };
}

const refusal = (reason: string, code = Code.PERMISSION_DENIED) =>
  new SwitchboardClientError(code, reason, reason.toLowerCase());

/** The part of SwitchboardClient a ChatApp uses, over an in-memory server. */
class FakeClient extends TypedEmitter<SwitchboardClientEvents> {
  state: SwitchboardClient["state"] = "open";
  /** The user's conversations, any order; listed newest first, `limit` of them (0: 100). */
  conversations: Conversation[] = [];
  /** Rosters of the groups the user is in; another group's listMembers is refused NOT_MEMBER. */
  rosters = new Map<string, string[]>();
  /** Messages per conversation; one without an entry does not exist (history: NOT_MEMBER). */
  messages = new Map<string, ChatMessage[]>();
  listLimits: number[] = [];
  historyQueries: HistoryQuery[] = [];
  subscribed: string[][] = [];
  unsubscribed: string[][] = [];
  /** How the next sends end: an ack, or a rejection. */
  sendResult: () => Promise<SendAck> = () => new Promise(() => {});
  /** The options of every send. */
  sendOptions: SendOptions[] = [];
  historyResult: ((q: HistoryQuery) => Promise<HistoryPage>) | undefined;

  fire<K extends keyof SwitchboardClientEvents>(event: K, payload: SwitchboardClientEvents[K]): void {
    this.emit(event, payload);
  }

  async listConversations(options: { limit?: number } = {}): Promise<Conversation[]> {
    const limit = options.limit ?? 0;
    this.listLimits.push(limit);
    return [...this.conversations]
      .sort((a, b) => b.createdAtMs - a.createdAtMs)
      .slice(0, limit === 0 ? 100 : limit);
  }

  /** Members per page, as the server's listMembers default (1,000). */
  memberPageSize = 1_000;
  memberQueries: Array<string | undefined> = [];

  async listMembers(conversationId: string, options: { after?: string } = {}): Promise<MemberList> {
    this.memberQueries.push(options.after);
    const roster = this.rosters.get(conversationId);
    if (!roster) throw refusal("NOT_MEMBER");
    const after = options.after;
    const sorted = [...roster].sort();
    const rest = after === undefined ? sorted : sorted.filter((m) => m > after);
    const members = rest.slice(0, this.memberPageSize);
    return {
      conversationId,
      members,
      roles: members.map((userId) => ({ userId, role: userId === ME ? "owner" : "member" })),
      hasMore: rest.length > members.length,
    };
  }

  history(q: HistoryQuery): Promise<HistoryPage> {
    this.historyQueries.push(q);
    if (this.historyResult) return this.historyResult(q);
    const all = this.messages.get(q.conversationId);
    if (!all) return Promise.reject(refusal("NOT_MEMBER"));
    const below = all.filter((m) => q.beforeSeq === undefined || m.seq < q.beforeSeq);
    const page = below.slice(-(q.limit ?? 100));
    return Promise.resolve({
      conversationId: q.conversationId,
      messages: page,
      hasMore: below.length > page.length,
    });
  }

  async listReceipts(): Promise<[]> {
    return [];
  }

  async subscribePresence(userIds: string[]): Promise<PresenceStatus[]> {
    this.subscribed.push(userIds);
    if (userIds.length > 100) throw refusal("INVALID_PRESENCE_TARGETS", Code.INVALID_ARGUMENT);
    return userIds.map((userId) => ({ userId, online: true, lastActiveAtMs: 1 }));
  }

  async unsubscribePresence(userIds: string[]): Promise<void> {
    this.unsubscribed.push(userIds);
  }

  async leaveGroup(conversationId: string): Promise<void> {
    this.rosters.delete(conversationId);
    this.conversations = this.conversations.filter((c) => c.id !== conversationId);
  }

  send(_target: unknown, _body: string, options: SendOptions = {}): Promise<SendAck> {
    this.sendOptions.push(options);
    return this.sendResult();
  }

  async getNotificationSettings() {
    return { muted: [], doNotDisturb: null };
  }

  /** How each updateGroup ends, in turn (then: taken, the group's settings changed accordingly). */
  groupChangeResults: Array<() => Promise<void>> = [];
  groupChanges: Array<Partial<Conversation>> = [];

  async updateGroup(conversationId: string, change: Partial<Conversation>): Promise<Conversation> {
    this.groupChanges.push(change);
    await this.groupChangeResults.shift()?.();
    const i = this.conversations.findIndex((c) => c.id === conversationId);
    const updated = { ...this.conversations[i]!, ...change };
    updated.version = this.conversations[i]!.version + 1;
    this.conversations[i] = updated;
    return updated;
  }

  /** Typing notices sent, as "conversation typing". */
  typed: string[] = [];
  typing(conversationId: string, typing: boolean): void {
    this.typed.push(`${conversationId} ${typing}`);
  }
  /** Receipts sent, as "kind conversation seq". */
  receipts: string[] = [];
  async markRead(conversationId: string, seq: number): Promise<void> {
    this.receipts.push(`read ${conversationId} ${seq}`);
  }
  async markDelivered(conversationId: string, seq: number): Promise<void> {
    this.receipts.push(`delivered ${conversationId} ${seq}`);
  }
}

/** localStorage, for the outbox. */
class MemoryStorage {
  private readonly items = new Map<string, string>();
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

let client: FakeClient;
let outbox: Outbox;
let checkpoints: Checkpoint[];

function newApp(): ChatApp {
  return new ChatApp(
    client as unknown as SwitchboardClient,
    ME,
    (checkpoint) => checkpoints.push(checkpoint),
    outbox,
    () => true,
  );
}

/** Lets the app's chains of requests (all answered at once by the fake) run to their end. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setTimeout(r, 0));
}

beforeEach(() => {
  vi.stubGlobal("document", { addEventListener: () => {}, visibilityState: "visible" });
  vi.stubGlobal("localStorage", new MemoryStorage());
  client = new FakeClient();
  outbox = new Outbox("http://server", ME);
  checkpoints = [];
});
afterEach(() => {
  vi.unstubAllGlobals();
});

describe("the conversation list", () => {
  it("lists up to 1,000 conversations, and takes an unlisted group as left only when the server says so", async () => {
    // 1,100 groups: the listing holds the 1,000 newest; g:5 is older, g:gone was left elsewhere.
    for (let i = 0; i < 1_100; i++) {
      client.conversations.push(conversation(`g:${i}`, 1_000 + i));
      client.rosters.set(`g:${i}`, [ME, "bob"]);
    }
    for (const c of client.conversations) client.messages.set(c.id, []);
    const app = newApp();
    app.openById("g:5"); // e.g. a notification's, or a group whose message just came
    app.openById("g:150");
    app.openById("g:gone");
    await settle();
    expect(client.listLimits.every((l) => l === CONVERSATIONS_LISTED)).toBe(true);
    expect(app.conversations.get("g:150")?.isMember).toBe(true); // listed
    expect(app.conversations.get("g:5")?.isMember).toBe(true); // older than the listing, still ours
    expect(app.conversations.get("g:gone")?.isMember).toBe(false); // the server: NOT_MEMBER
  });

  it("loads the history of a direct conversation the listing did not show when it is opened", async () => {
    client.messages.set("dm:alice~zed", [message("dm:alice~zed", 1, "zed"), message("dm:alice~zed", 2, ME)]);
    const app = newApp();
    await settle();
    app.openDirect("zed");
    await settle();
    expect(app.open?.messages.map((m) => m.body)).toEqual(["m1", "m2"]);
    // A conversation not started yet has no history: nothing to tell the user.
    app.openDirect("nobody");
    await settle();
    expect(app.open?.messages).toEqual([]);
    expect(app.open?.historyLoaded).toBe(true);
    expect(app.notice).toBe("");
  });
});

describe("the outbox", () => {
  const kept: Array<[string, SwitchboardClientError]> = [
    ["the client closed", new SwitchboardClientError(Code.CANCELLED, "CLOSED", "client closed")],
    ["not connected", new SwitchboardClientError(Code.FAILED_PRECONDITION, "NOT_CONNECTED", "closed")],
    ["queue full", new SwitchboardClientError(Code.RESOURCE_EXHAUSTED, "SEND_QUEUE_FULL", "full")],
    [
      "the token refused for good",
      new SwitchboardClientError(Code.UNAUTHENTICATED, "INVALID_TOKEN", "closed", { closeCode: 3500 }),
    ],
    [
      "the token expired without renewal",
      new SwitchboardClientError(Code.UNAUTHENTICATED, "TOKEN_EXPIRED", "expired", { closeCode: 3005 }),
    ],
    ["the upgrade refused", new SwitchboardClientError(Code.UNAUTHENTICATED, "INVALID_TOKEN", "HTTP 401")],
  ];
  it.each(kept)("keeps a message when the connection ends before it is sent: %s", async (_, err) => {
    client.sendResult = () => Promise.reject(err);
    const app = newApp();
    app.openDirect("bob");
    app.send("written offline");
    await settle();
    expect(outbox.entries().map((e) => e.body)).toEqual(["written offline"]);
    expect(app.open?.outgoing.map((o) => o.failure)).toEqual([KEPT_TEXT]);
  });

  it("sends with the time the message was written, and drops one the SDK gave up on as too old", async () => {
    const writtenAt = Date.now() - 30 * 3_600_000; // e.g. kept in the outbox over a day ago
    outbox.add({
      conversationId: "dm:alice~bob",
      clientMsgId: "old",
      body: "from yesterday",
      createdAtMs: writtenAt,
    });
    client.sendResult = () =>
      Promise.reject(new SwitchboardClientError(Code.DEADLINE_EXCEEDED, "SEND_EXPIRED", "given up"));
    const app = newApp();
    app.resendOutbox();
    await settle();
    expect(client.sendOptions).toEqual([{ clientMsgId: "old", createdAtMs: writtenAt }]);
    // Sent again at every start it would only be refused again: shown as not sent, and why.
    expect(outbox.entries()).toEqual([]);
    expect(app.conversations.get("dm:alice~bob")?.outgoing.map((o) => o.failure)).toEqual([EXPIRED_TEXT]);
  });

  it("drops a message the server refused", async () => {
    client.sendResult = () => Promise.reject(refusal("NOT_MEMBER"));
    const app = newApp();
    app.openDirect("bob");
    app.send("refused");
    await settle();
    expect(outbox.entries()).toEqual([]);
    expect(app.open?.outgoing[0]?.failure).toBe("not_member");
  });

  it("makes client message ids where crypto.randomUUID is missing (a page on plain http)", () => {
    vi.stubGlobal("crypto", { getRandomValues: (b: Uint8Array) => webcrypto.getRandomValues(b) });
    const app = newApp();
    app.openDirect("bob");
    app.send("over http");
    expect(outbox.entries().map((e) => e.clientMsgId)).toEqual([
      expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/),
    ]);
  });
});

describe("history paging", () => {
  it("asks for one older page at a time, however often the user scrolls", async () => {
    const id = "dm:alice~bob";
    client.conversations.push(conversation(id, 1, 40));
    client.messages.set(
      id,
      Array.from({ length: 40 }, (_, i) => message(id, i + 1, "bob")),
    );
    const app = newApp();
    await app.refreshConversations(); // as after a sync
    app.select(id);
    await settle();
    expect(app.open?.hasOlder).toBe(true);
    const pending: Array<() => void> = [];
    const direct = client.history.bind(client);
    client.historyResult = (q) => new Promise((resolve) => pending.push(() => resolve(direct({ ...q }))));
    const before = client.historyQueries.length;
    const loads = Array.from({ length: 5 }, () => app.loadOlder());
    expect(client.historyQueries.length - before).toBe(1);
    expect(client.historyQueries.at(-1)?.beforeSeq).toBe(11);
    client.historyResult = undefined;
    for (const answer of pending) answer();
    await Promise.all(loads);
    expect(app.open?.messages).toHaveLength(40);
    expect(app.open?.hasOlder).toBe(false);
  });
});

describe("presence", () => {
  it("watches at most 100 users a request, and stops watching those met only in a group the user left", async () => {
    // 150 direct conversations, and a group with carol (met only there) and bob (also a DM).
    for (let i = 0; i < 150; i++) client.conversations.push(conversation(`dm:alice~u${i}`, i + 1, 1));
    client.conversations.push(conversation("dm:alice~bob", 500, 1), conversation("g:1", 600));
    for (const c of client.conversations) client.messages.set(c.id, []);
    client.rosters.set("g:1", [ME, "bob", "carol"]);
    const app = newApp();
    await app.refreshConversations(); // as after a sync
    app.select("g:1");
    await settle();
    expect(client.subscribed.flat()).toContain("carol");
    expect(client.subscribed.every((ids) => ids.length <= 100)).toBe(true);
    expect(app.notice).toBe("");
    expect(app.presence.get("u0")).toBe(true);

    app.select("g:1");
    await app.leave();
    await settle();
    // The server would refuse carol's watch on the next reconnect (NOT_A_CONTACT); bob is a contact still.
    expect(client.unsubscribed).toEqual([["carol"]]);
    expect(app.presence.has("carol")).toBe(false);
  });
});

describe("a large group's members", () => {
  it("are shown a page at a time, the next page asked for after the last member shown", async () => {
    const roster = [ME, ...Array.from({ length: 5 }, (_, i) => `u${i}`)];
    client.conversations.push({ ...conversation("g:big", 1), memberCount: 6, delivery: "pull" });
    client.messages.set("g:big", []);
    client.rosters.set("g:big", roster);
    client.memberPageSize = 4;
    const app = newApp();
    await app.refreshConversations();
    app.select("g:big");
    const c = app.open!;
    await app.loadMembers(c);
    expect(c.members).toEqual([ME, "u0", "u1", "u2"]);
    expect(c.membersHasMore).toBe(true);
    expect(c.memberCount).toBe(6); // the conversation's count, not the page's

    // Asked twice at once (two clicks): one request.
    client.memberQueries.length = 0;
    await Promise.all([app.loadMoreMembers(c), app.loadMoreMembers(c)]);
    expect(client.memberQueries).toEqual(["u2"]);
    expect(c.members).toEqual([ME, "u0", "u1", "u2", "u3", "u4"]);
    expect(c.roles.get(ME)).toBe("owner");
    expect(c.roles.get("u4")).toBe("member");
    expect(c.membersHasMore).toBe(false);
    expect(c.memberCount).toBe(6);
    // Nothing more to ask for.
    await app.loadMoreMembers(c);
    expect(client.memberQueries).toEqual(["u2"]);
    expect(app.notice).toBe("");
  });

  it("keep a roster read afresh meanwhile rather than append a page that followed the old one", async () => {
    client.conversations.push({ ...conversation("g:big", 1), memberCount: 6, delivery: "pull" });
    client.messages.set("g:big", []);
    client.rosters.set("g:big", [ME, "u0", "u1", "u2", "u3", "u4"]);
    client.memberPageSize = 3;
    const app = newApp();
    await app.refreshConversations();
    app.select("g:big");
    const c = app.open!;
    await app.loadMembers(c);
    // The next page (after "u1") is held on its way.
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    const list = client.listMembers.bind(client);
    client.listMembers = async (id, options = {}) => {
      if (options.after !== undefined) await held;
      return list(id, options);
    };
    const more = app.loadMoreMembers(c);
    // Meanwhile u0 leaves, and the group's event has the roster listed again.
    client.rosters.set("g:big", [ME, "u1", "u2", "u3", "u4"]);
    await app.loadMembers(c);
    release();
    await more;
    expect(c.members).toEqual([ME, "u1", "u2"]);
    expect(c.membersHasMore).toBe(true);
  });
});

describe("a group change", () => {
  const lost = () => Promise.reject(refusal("CONNECTION_LOST", Code.UNAVAILABLE));
  const unanswered = () => Promise.reject(refusal("TIMEOUT", Code.DEADLINE_EXCEEDED));

  async function openGroup(): Promise<ChatApp> {
    client.conversations.push({ ...conversation("g:crew", 1), name: "Crew", owner: ME });
    client.messages.set("g:crew", []);
    client.rosters.set("g:crew", [ME, "bob"]);
    const app = newApp();
    await app.refreshConversations();
    app.select("g:crew");
    return app;
  }

  it("cut off with the connection is asked again, and shown as asked meanwhile", async () => {
    const app = await openGroup();
    client.groupChangeResults = [lost, unanswered];
    const renamed = app.renameGroup("Ship crew");
    expect(app.open!.name).toBe("Ship crew");
    await renamed;
    expect(client.groupChanges).toEqual([
      { name: "Ship crew" },
      { name: "Ship crew" },
      { name: "Ship crew" },
    ]);
    expect(app.open).toMatchObject({ name: "Ship crew", version: 2 });
    expect(app.notice).toBe("");
  });

  it("is put back, and says why, when its outcome stays unknown, or when the server refuses it", async () => {
    const app = await openGroup();
    client.groupChangeResults = [lost, lost, unanswered];
    await app.renameGroup("Ship crew");
    expect(client.groupChanges).toHaveLength(3);
    expect(app.open!.name).toBe("Crew");
    expect(app.notice).toBe("The server did not answer in time: try again.");

    client.groupChanges = [];
    client.groupChangeResults = [() => Promise.reject(refusal("NOT_ADMIN"))];
    await app.changeGroup({ open: true });
    expect(client.groupChanges).toEqual([{ open: true }]); // refused: asked once
    expect(app.open!.open).toBe(false);
    expect(app.notice).toBe("Only the group's admins can do that.");
  });

  it("is not asked again for a setting the server shows changed since: as asked (it ran), or by another admin", async () => {
    const app = await openGroup();
    const heldUntilCutOff = () => {
      let cutOff!: () => void;
      client.groupChangeResults = [
        () =>
          new Promise<void>((_, reject) => {
            cutOff = () => reject(refusal("CONNECTION_LOST", Code.UNAVAILABLE));
          }),
      ];
      return () => cutOff();
    };
    const told = (change: Partial<Conversation>, version: number) =>
      client.fire("conversation", { ...client.conversations[0]!, ...change, version });

    // Another admin renames it meanwhile (their event arrives): asking again would undo theirs.
    let cutOff = heldUntilCutOff();
    let renamed = app.renameGroup("Ship crew");
    await settle();
    told({ name: "Deck crew" }, 2);
    await settle();
    cutOff();
    await renamed;
    expect(client.groupChanges).toEqual([{ name: "Ship crew" }]);
    expect(app.open!.name).toBe("Deck crew");
    expect(app.notice).toBe("The connection was lost before the server answered: try again.");

    // This change's own event arrived before the connection went: it ran, nothing to ask again.
    client.groupChanges = [];
    cutOff = heldUntilCutOff();
    renamed = app.renameGroup("Galley crew");
    await settle();
    told({ name: "Galley crew" }, 3);
    await settle();
    cutOff();
    await renamed;
    expect(client.groupChanges).toEqual([{ name: "Galley crew" }]);
    expect(app.open).toMatchObject({ name: "Galley crew", version: 3 });
    expect(app.notice).toBe("");
  });

  it("is not asked again for a setting the user changed again meanwhile", async () => {
    const app = await openGroup();
    let cutOff!: () => void;
    client.groupChangeResults = [
      () =>
        new Promise<void>((_, reject) => {
          cutOff = () => reject(refusal("CONNECTION_LOST", Code.UNAVAILABLE));
        }),
    ];
    const first = app.changeGroup({ name: "Ship crew", open: true });
    const second = app.renameGroup("Deck crew");
    cutOff();
    await Promise.all([first, second]);
    // The first change asked again for what is still its own (open), not for the name.
    expect(client.groupChanges).toEqual([
      { name: "Ship crew", open: true },
      { name: "Deck crew" },
      { open: true },
    ]);
    expect(app.open).toMatchObject({ name: "Deck crew", open: true });
    expect(app.notice).toBe("");
  });
});

describe("notices", () => {
  it("say what a refusal means in the user's words, and name the reason of one they do not know", () => {
    expect(noticeOf(refusal("OWNER_MUST_TRANSFER"))).toMatch(/^You own this group/);
    expect(noticeOf(refusal("SOMETHING_NEW"))).toBe("SOMETHING_NEW: something_new");
    expect(noticeOf(new Error("plain"))).toBe("plain");
  });
});

describe("typing", () => {
  it("tells the others the user stopped as soon as the composer is emptied", async () => {
    client.conversations = [conversation("g:1", 1, 4)];
    client.rosters.set("g:1", [ME, "bob"]);
    client.messages.set("g:1", []);
    const app = newApp();
    await app.refreshConversations();
    app.select("g:1");
    app.composing("h");
    app.composing("hi");
    app.composing("");
    expect(client.typed).toEqual(["g:1 true", "g:1 false"]);
  });
});

describe("the checkpoint", () => {
  /** Bob's message 7 in the large group "g:big", live, at inbox cursor 3. */
  const bobsPullMessage = () =>
    client.fire("message", {
      message: message("g:big", 7, "bob"),
      cursor: 3,
      source: "live",
      delivery: "pull",
    });

  it("is saved as the SDK reports it, after the message it covers was taken in", () => {
    const app = newApp();
    bobsPullMessage();
    expect(app.conversations.get("g:big")?.messages.map((m) => m.seq)).toEqual([7]);
    const checkpoint = { cursor: 3, pullPositions: { "g:big": 7 } };
    client.fire("checkpoint", checkpoint);
    expect(checkpoints).toEqual([checkpoint]);
  });

  it("lets go of the messages it holds when the server's data set changed, so reused seqs are shown", () => {
    const app = newApp();
    bobsPullMessage();
    client.fire("dataSetChanged", { previous: "a", current: "b" });
    expect(app.conversations.get("g:big")?.messages).toEqual([]);
    // After a restore, seq 7 is another message: it is taken in, not dropped as a repeat.
    client.fire("message", {
      message: message("g:big", 7, "carol"),
      cursor: 1,
      source: "sync",
      delivery: "pull",
    });
    expect(app.conversations.get("g:big")?.messages.map((m) => m.sender)).toEqual(["carol"]);
  });

  it("forgets the watermarks, receipts sent and history of the data before a restore, and loads the history again", async () => {
    client.conversations = [conversation("dm:alice~bob", 1, 6)];
    client.messages.set(
      "dm:alice~bob",
      [1, 2, 3, 4, 5, 6].map((seq) => message("dm:alice~bob", seq, seq <= 3 ? "bob" : ME)),
    );
    const app = newApp();
    await app.refreshConversations();
    client.fire("receipt", { conversationId: "dm:alice~bob", userId: "bob", seq: 6, kind: "read" });
    client.fire("message", {
      message: message("dm:alice~bob", 3, "bob"),
      cursor: 3,
      source: "live",
      delivery: "push",
    });
    await new Promise((r) => setTimeout(r, 200)); // receipts go out coalesced, after 150 ms
    expect(client.receipts).toContain("delivered dm:alice~bob 3");
    const dm = app.conversations.get("dm:alice~bob")!;
    expect([dm.peerRead.get("bob"), dm.historyLoaded]).toEqual([6, true]);

    // Restored from a copy of seqs 1-3: 4 and 5 are new messages of bob's, delivered here again.
    client.messages.set(
      "dm:alice~bob",
      [1, 2, 3, 4, 5].map((seq) => message("dm:alice~bob", seq, "bob")),
    );
    client.conversations = [conversation("dm:alice~bob", 1, 5)];
    client.fire("dataSetChanged", { previous: "a", current: "b" });
    expect([dm.peerRead.size, dm.readSeq, dm.historyLoaded, dm.messages]).toEqual([0, 0, false, []]);
    client.receipts = [];
    client.fire("message", {
      message: message("dm:alice~bob", 3, "bob"),
      cursor: 3,
      source: "sync",
      delivery: "push",
    });
    client.fire("synced", { cursor: 3, delivered: 1 });
    await settle();
    await new Promise((r) => setTimeout(r, 200));
    expect(client.receipts).toContain("delivered dm:alice~bob 3");
    expect(dm.messages.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5]);
  });
});
