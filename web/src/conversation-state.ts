/**
 * What the client knows about one conversation, and the pure rules over it: its title, its unread
 * count and the delivery state of each of the user's own messages. No DOM and no network here.
 */
import type { ChatMessage, Conversation, GroupPolicyName, MemberRoleName } from "../../sdk/src/index.js";

/** A message the user sent that the server has not acknowledged yet (queued offline or in flight). */
export interface OutgoingMessage {
  clientMsgId: string;
  body: string;
  createdAtMs: number;
  /** Why the send was given up (a non-retryable refusal); undefined while it is still being tried. */
  failure?: string;
  /**
   * A send the server refused: the conversation's newest seq when the refusal came, so that it
   * shows where it was written, among the messages of its time (not under newer ones).
   */
  refusedAfterSeq?: number;
}

export type DeliveryState = "queued" | "sending" | "failed" | "sent" | "delivered" | "read";

export interface ConversationState {
  id: string;
  kind: "direct" | "group";
  /** Group name; "" for direct conversations. */
  name: string;
  memberCount: number;
  /** The group's owner ("" for direct conversations, or until the server lists the group). */
  owner: string;
  /** Anyone may join the group by its id (joinGroup). */
  open: boolean;
  /** Who may post: "admins" makes the group an announcement channel. */
  postPolicy: GroupPolicyName;
  /** Who may add members: with "admins", a plain member's page offers no way to add anyone. */
  addPolicy: GroupPolicyName;
  /** "pull": a large group (docs/protocol.md §3.1), whose members are too many to show presence for. */
  delivery: "push" | "pull";
  /** Highest seq known in the conversation. */
  lastSeq: number;
  createdAtMs: number;
  /** Loaded messages, oldest first, unique by seq. */
  messages: ChatMessage[];
  outgoing: OutgoingMessage[];
  /** The user's own read watermark (from the server, this tab, or the user's other tabs). */
  readSeq: number;
  /** Other members' watermarks, from receipt events. */
  peerDelivered: Map<string, number>;
  peerRead: Map<string, number>;
  /** Older messages remain on the server (history paging). */
  hasOlder: boolean;
  /** The newest page of history was fetched. */
  historyLoaded: boolean;
  /** Sorted member ids, once listed. */
  members: string[] | undefined;
  /** The listed members' roles (who is owner or admin). */
  roles: Map<string, MemberRoleName>;
  /** More members sort after the last one listed (a large group's roster comes in pages). */
  membersHasMore: boolean;
  /** False once the server no longer lists the group among the user's (removed by a member). */
  isMember: boolean;
  /**
   * When this page last learned of the group from something newer than a listing (on the page's own
   * count: an event, the reply to a change, creating or joining it, the user's own edit). A listing
   * asked for before then is older for its settings and for whether the user is a member.
   */
  learnedAt: number;
  /**
   * The version of the server's record these settings came from (Conversation.version; 0: none
   * known): a reply or event of an older version, arriving late, changes no setting.
   */
  version: number;
  /** The group's settings as the server last said them (a refused change of the user's goes back to these). */
  serverSettings: GroupSettings;
  /**
   * The user's changes not answered yet, per setting, with the change that made them. They are shown
   * over what the server says meanwhile: the reply to an earlier change, or its event, still has the
   * old value of a setting changed after it.
   */
  unsettled: Map<keyof GroupSettings, { value: GroupSettings[keyof GroupSettings]; change: number }>;
}

/** What admins change in a group (docs/protocol.md, updateGroup). */
export type GroupSettings = Pick<ConversationState, "name" | "open" | "postPolicy" | "addPolicy">;

export function directConversationId(a: string, b: string): string {
  return `dm:${[a, b].sort().join("~")}`;
}

/** The other member of a direct conversation (the user for a note to self). */
export function peerOf(conversationId: string, me: string): string {
  const users = conversationId.slice("dm:".length).split("~");
  return users.find((u) => u !== me) ?? me;
}

export function newConversationState(
  conversation: Pick<Conversation, "id"> & Partial<Conversation>,
): ConversationState {
  return {
    id: conversation.id,
    kind: conversation.kind === "group" || conversation.id.startsWith("g:") ? "group" : "direct",
    name: conversation.name ?? "",
    memberCount: conversation.memberCount ?? 0,
    owner: conversation.owner ?? "",
    open: conversation.open ?? false,
    postPolicy: conversation.postPolicy ?? "everyone",
    addPolicy: conversation.addPolicy ?? "everyone",
    delivery: conversation.delivery ?? "push",
    lastSeq: conversation.lastSeq ?? 0,
    createdAtMs: conversation.createdAtMs ?? Date.now(),
    messages: [],
    outgoing: [],
    readSeq: conversation.readSeq ?? 0,
    peerDelivered: new Map(),
    peerRead: new Map(),
    hasOlder: false,
    historyLoaded: false,
    members: undefined,
    roles: new Map(),
    membersHasMore: false,
    isMember: true,
    learnedAt: 0,
    version: conversation.version ?? 0,
    serverSettings: {
      name: conversation.name ?? "",
      open: conversation.open ?? false,
      postPolicy: conversation.postPolicy ?? "everyone",
      addPolicy: conversation.addPolicy ?? "everyone",
    },
    unsettled: new Map(),
  };
}

/**
 * Takes in what the server says of a conversation (a listing, or the reply to a group change).
 * Seqs only rise: a reply to a group change carries lastSeq and readSeq 0 (docs/protocol.md §2.2).
 */
/**
 * Takes in a listing asked for at `askedAt` (the page's change count then): its seqs always, its
 * settings only if nothing newer changed them since. Requests run concurrently on the server, so a
 * listing asked for before a rename can be answered after the rename's reply and event.
 */
export function applyListed(c: ConversationState, info: Conversation, askedAt: number): void {
  if (c.learnedAt <= askedAt) return applyServerInfo(c, info);
  c.lastSeq = Math.max(c.lastSeq, info.lastSeq);
  c.readSeq = Math.max(c.readSeq, info.readSeq);
}

export function applyServerInfo(c: ConversationState, info: Conversation): void {
  c.lastSeq = Math.max(c.lastSeq, info.lastSeq);
  c.readSeq = Math.max(c.readSeq, info.readSeq);
  // An older state of the group than one already shown (the reply to a change answered after the
  // event of a later one, a listing read before it): its seqs count, nothing else.
  if (info.version !== 0 && info.version < c.version) return;
  c.version = Math.max(c.version, info.version); // one without a version (0) forgets none seen
  c.serverSettings = {
    name: info.name,
    open: info.open,
    postPolicy: info.postPolicy,
    addPolicy: info.addPolicy,
  };
  showSettings(c);
  c.memberCount = info.memberCount;
  c.owner = info.owner;
  c.delivery = info.delivery;
}

/** The user changes settings (change number `change`): shown at once, until the server answers. */
export function proposeSettings(
  c: ConversationState,
  settings: Partial<GroupSettings>,
  change: number,
): void {
  for (const [key, value] of settingEntries(settings)) c.unsettled.set(key, { value, change });
  showSettings(c);
}

/**
 * The server answered change `change`: its settings show what the server says again, unless a later
 * change of the same setting is still unanswered. `accepted` (the server holds these values: it took
 * them, or had them already) keeps them shown until a reply or event brings the server's record.
 */
export function settleSettings(
  c: ConversationState,
  settings: Partial<GroupSettings>,
  change: number,
  accepted: boolean,
): void {
  for (const [key, value] of settingEntries(settings)) {
    if (c.unsettled.get(key)?.change === change) c.unsettled.delete(key);
    if (accepted) c.serverSettings = { ...c.serverSettings, [key]: value };
  }
  showSettings(c);
}

/** The settings of `settings` whose newest unanswered change is still change `change`. */
export function stillProposed(
  c: ConversationState,
  settings: Partial<GroupSettings>,
  change: number,
): Partial<GroupSettings> {
  const proposed: Partial<GroupSettings> = {};
  for (const [key, value] of settingEntries(settings))
    if (c.unsettled.get(key)?.change === change) Object.assign(proposed, { [key]: value });
  return proposed;
}

function showSettings(c: ConversationState): void {
  const shown: GroupSettings = { ...c.serverSettings };
  for (const [key, { value }] of c.unsettled) Object.assign(shown, { [key]: value });
  Object.assign(c, shown);
}

function settingEntries(
  settings: Partial<GroupSettings>,
): [keyof GroupSettings, GroupSettings[keyof GroupSettings]][] {
  return (Object.keys(settings) as (keyof GroupSettings)[])
    .filter((key) => settings[key] !== undefined)
    .map((key) => [key, settings[key] as GroupSettings[keyof GroupSettings]]);
}

/** The user's role in a group; the owner is known from the listing before the roster is loaded. */
export function roleOf(c: ConversationState, me: string): MemberRoleName | undefined {
  return c.roles.get(me) ?? (c.owner === me && me !== "" ? "owner" : undefined);
}

/** Admins and the owner change the group's settings (the server refuses others with NOT_ADMIN). */
export function isGroupAdmin(c: ConversationState, me: string): boolean {
  const role = roleOf(c, me);
  return c.kind === "group" && (role === "owner" || role === "admin");
}

/**
 * The user may not post here: an admins-only group in which they are a plain member. A role not
 * known yet (the roster is loading) does not restrict: the server has the last word on a send.
 */
export function postingRestricted(c: ConversationState, me: string): boolean {
  return c.kind === "group" && c.postPolicy === "admins" && roleOf(c, me) === "member";
}

/**
 * The user may add members: anyone unless the group's addPolicy is admins-only. As with posting, a
 * role not known yet does not restrict (the server refuses with NOT_ADMIN if it must).
 */
export function mayAddMembers(c: ConversationState, me: string): boolean {
  return c.kind === "group" && (c.addPolicy !== "admins" || roleOf(c, me) !== "member");
}

/** A channel: a group whose members mostly read, because only admins post or it is large (pull). */
export function isChannel(c: ConversationState): boolean {
  return c.kind === "group" && (c.postPolicy === "admins" || c.delivery === "pull");
}

export function titleOf(c: ConversationState, me: string): string {
  if (c.kind === "group") return c.name || "Group";
  return peerOf(c.id, me);
}

/**
 * Drops what the conversation holds of the server's data, keyed by seqs and versions the server may
 * hand out again (its data was restored from a backup): the history is loaded again on the next
 * listing. What the user wrote and the server never acknowledged (`outgoing`) stays, to be sent.
 */
export function forgetServerData(c: ConversationState): void {
  c.messages = [];
  c.lastSeq = 0;
  c.readSeq = 0;
  c.peerRead.clear();
  c.peerDelivered.clear();
  c.hasOlder = false;
  c.historyLoaded = false;
  c.version = 0;
}

/** Adds a message unless it is known already (sync, history and live may all bring it); true if new. */
export function addMessage(c: ConversationState, m: ChatMessage): boolean {
  const list = c.messages;
  let i = list.length;
  while (i > 0 && list[i - 1]!.seq > m.seq) i--;
  if (i > 0 && list[i - 1]!.seq === m.seq) return false;
  list.splice(i, 0, m);
  c.lastSeq = Math.max(c.lastSeq, m.seq);
  c.outgoing = c.outgoing.filter((o) => !(m.sender !== "" && o.clientMsgId === m.clientMsgId));
  return true;
}

/**
 * Unread: every seq above the user's read watermark that is not known to be the user's own. Seqs
 * not loaded yet count too, so the count is right before the history has been fetched.
 */
export function unreadCount(c: ConversationState, me: string): number {
  const unseen = c.lastSeq - c.readSeq;
  if (unseen <= 0) return 0;
  const mine = c.messages.filter((m) => m.seq > c.readSeq && m.sender === me).length;
  return Math.max(0, unseen - mine);
}

export function raiseWatermark(map: Map<string, number>, user: string, seq: number): void {
  if (seq > (map.get(user) ?? 0)) map.set(user, seq);
}

/** How far one of the user's own acknowledged messages got: read or delivered by any other member. */
export function deliveryStateOf(c: ConversationState, m: ChatMessage, me: string): DeliveryState {
  const reached = (map: Map<string, number>) =>
    [...map].filter(([user, seq]) => user !== me && seq >= m.seq).length;
  if (reached(c.peerRead) > 0) return "read";
  if (reached(c.peerDelivered) > 0 || reached(c.peerRead) > 0) return "delivered";
  return "sent";
}

/** The newest thing said in the conversation, for the list: an unacknowledged message counts. */
export function lastActivity(
  c: ConversationState,
): { body: string; sender?: string; atMs: number } | undefined {
  const pending = c.outgoing.at(-1);
  const last = c.messages.at(-1);
  if (pending && (!last || pending.createdAtMs >= last.createdAtMs))
    return { body: pending.body, atMs: pending.createdAtMs };
  return last && { body: last.body, sender: last.sender, atMs: last.createdAtMs };
}
