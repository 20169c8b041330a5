/**
 * The client's brain: turns the SDK's events into conversation state and the user's actions into
 * SDK calls. It owns no DOM; `onChange` asks the view to draw again.
 */
import {
  type ChatMessage,
  type Checkpoint,
  Code,
  type Conversation,
  LocalReason,
  randomId,
  type SwitchboardClient,
  SwitchboardClientError,
} from "../../sdk/src/index.js";
import {
  addMessage,
  applyListed,
  applyServerInfo,
  type ConversationState,
  directConversationId,
  forgetServerData,
  type GroupSettings,
  newConversationState,
  peerOf,
  postingRestricted,
  proposeSettings,
  raiseWatermark,
  settleSettings,
  stillProposed,
} from "./conversation-state.js";
import type { Outbox, OutboxEntry } from "./local-store.js";
import { ReceiptSender } from "./receipts.js";
import { TypingSender, TypingWatcher } from "./typing.js";

/** What the user sees of the connection: "catching up" is the sync after a (re)connect. */
export type ConnectionStatus = "connecting" | "catching-up" | "online" | "reconnecting" | "signed-out";

const HISTORY_PAGE = 30;

/**
 * How many conversations a listing asks for: the most the server lists (docs/protocol.md,
 * listConversations; `limit` 0 would mean its default page of 100). A user in more still has the
 * older ones: a group missing from a listing is asked about before it is shown as left.
 */
export const CONVERSATIONS_LISTED = 1_000;

/** Most users one subscribePresence may name (docs/protocol.md: INVALID_PRESENCE_TARGETS past it). */
const PRESENCE_TARGETS_PER_REQUEST = 100;

/**
 * What the SDK refuses itself because of the message (the server would refuse it too, or it must
 * never go out again: the server refused its frame, or it is too old to be resent safely).
 */
const MESSAGE_REFUSALS: ReadonlySet<string> = new Set([
  LocalReason.BODY_TOO_LARGE,
  LocalReason.EMPTY_BODY,
  LocalReason.INVALID_CLIENT_MSG_ID,
  LocalReason.FRAME_TOO_LARGE,
  LocalReason.INVALID_FRAME,
  LocalReason.SEND_EXPIRED,
  LocalReason.INVALID_CREATED_AT,
]);
const LOCAL_REASONS: ReadonlySet<string> = new Set(Object.values(LocalReason));

/**
 * Whether a send's rejection is a verdict on the message itself (the server refused it, e.g.
 * NOT_MEMBER, or it can never be sent), after which it is not worth keeping. The others say only that
 * this connection is over or busy (closed, signed out, token refused or expired, queue full): the
 * message stays in the outbox and goes out when the chat next opens.
 */
export function refusedForGood(err: unknown): boolean {
  if (!(err instanceof SwitchboardClientError)) return false;
  if (MESSAGE_REFUSALS.has(err.reason)) return true;
  // A terminal close (invalid or expired token, kicked), the SDK's own connection-side reasons, and
  // what it reports of a socket it could not open or the upgrade refused.
  if (err.closeCode !== undefined || LOCAL_REASONS.has(err.reason)) return false;
  if (err.code === Code.UNAUTHENTICATED || err.reason === "OPEN_FAILED") return false;
  return true;
}

/** Shown under a message kept in the outbox after the connection ended before it was sent. */
export const KEPT_TEXT = "Not sent yet: kept on this device, and sent when you next open the chat";

/**
 * Shown on a message the SDK gave up on (SEND_EXPIRED): unacknowledged a day after it was written,
 * too long to resend it safely (the server could store it twice). It may have been stored.
 */
export const EXPIRED_TEXT =
  "Not sent: it waited too long to go out safely. If it is not in the conversation, send it again";

/** Shown on the composer of an admins-only group, and on a message the server refused for it. */
export const POSTING_RESTRICTED_TEXT = "Only admins can post in this channel";

/**
 * The longest group name the client lets through: the server's default `groups.nameCharsMax`. A
 * server configured lower still refuses (INVALID_GROUP_NAME), which shows as a notice.
 */
export const GROUP_NAME_MAX = 200;

/** What the user should hear when joining by id fails (docs/protocol.md §6, joinGroup's reasons). */
const JOIN_ERRORS: Record<string, string> = {
  NOT_A_GROUP: "That is not a group id: a group id looks like g:123456789.",
  GROUP_NOT_FOUND: "There is no group with this id.",
  GROUP_CLOSED: "This group is closed: only its members can add you.",
  GROUP_FULL: "This group is full.",
};

/**
 * What the user should hear of a refusal a notice shows, in their words (docs/protocol.md §6); a
 * reason not listed shows the server's message after its reason, for whoever reports it.
 */
const NOTICES: Record<string, string> = {
  OWNER_MUST_TRANSFER: "You own this group: make another member its owner (Members) before you leave it.",
  NOT_ADMIN: "Only the group's admins can do that.",
  NOT_OWNER: "Only the group's owner can do that.",
  OWNER_PROTECTED: "The group's owner cannot be removed.",
  NOT_MEMBER: "You are not a member of this conversation.",
  USER_NOT_MEMBER: "That user is not a member of this group.",
  GROUP_FULL: "This group is full.",
  INVALID_USER_ID: "That is not a valid user id.",
  INVALID_GROUP_NAME: "That group name is not allowed (empty, or too long).",
  RATE_LIMITED: "Too many requests: wait a moment and try again.",
  TOKEN_EXPIRED: "Your session has expired: sign out and sign in again.",
  INVALID_TOKEN: "Your session is no longer valid: sign out and sign in again.",
  KICKED: "You were signed out by the service: sign out and sign in again.",
  STORAGE_FULL: "The server is out of storage: messages cannot be sent for now.",
  // The SDK's own, for a request whose answer never came.
  TIMEOUT: "The server did not answer in time: try again.",
  CONNECTION_LOST: "The connection was lost before the server answered: try again.",
};

/** A notice's text for `err`. */
export function noticeOf(err: unknown): string {
  if (err instanceof SwitchboardClientError) return NOTICES[err.reason] ?? `${err.reason}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

export class ChatApp {
  readonly conversations = new Map<string, ConversationState>();
  readonly presence = new Map<string, boolean>();
  /** Conversations whose push notifications this user muted. */
  muted = new Set<string>();
  readonly typing: TypingWatcher;
  status: ConnectionStatus = "connecting";
  /** Last problem worth telling the user (a refused request), cleared by the next success. */
  notice = "";
  /** Why the last attempt to join a group by id failed; shown by the join form. */
  joinError = "";
  /** Why the name typed into the group's settings was not sent; shown under the field. */
  renameError = "";
  /**
   * The member the owner clicked "Make owner" for once: a second click on the same button hands
   * the group over. Kept here, since the member list is drawn afresh on every change.
   */
  confirmingOwner: string | undefined;
  openId: string | undefined;
  onChange: () => void = () => {};

  private readonly typingSender: TypingSender;
  private readonly receipts: ReceiptSender;
  private readonly watched = new Set<string>();
  private refreshing: Promise<void> | undefined;
  /** The older-history page being fetched, per conversation: one request however often asked. */
  private readonly loadingOlder = new Map<string, Promise<void>>();
  /** The next page of members being fetched, per conversation: one request however often asked. */
  private readonly loadingMoreMembers = new Map<string, Promise<void>>();
  private refreshAgain = false;
  /** What this page learned of groups apart from listings, counted (ConversationState.learnedAt). */
  private learned = 0;
  /** The user's group setting changes, numbered (ConversationState.unsettled). */
  private settingsChanges = 0;

  constructor(
    readonly client: SwitchboardClient,
    readonly me: string,
    /** Persists where the SDK is (inbox cursor, large groups' positions), once messages are shown. */
    private readonly saveCheckpoint: (checkpoint: Checkpoint) => void,
    private readonly outbox: Outbox,
    private readonly isVisible: () => boolean = () => document.visibilityState === "visible",
    /** Ends what this app listens to on the page (a sign-in that failed gives way to the next). */
    signal?: AbortSignal,
  ) {
    this.typing = new TypingWatcher(() => this.onChange());
    this.typingSender = new TypingSender((id, typing) => client.typing(id, typing));
    // Only on a connection that is open: one waiting for the next connection could go out on a
    // server restored meanwhile (another data set), where its seq names another message. Refused
    // here, it is sent again after the next sync, unless the data set changed (receipts.forget).
    this.receipts = new ReceiptSender((kind, id, seq) =>
      client.state !== "open"
        ? Promise.reject(new Error("not connected"))
        : kind === "read"
          ? client.markRead(id, seq)
          : client.markDelivered(id, seq),
    );
    client.on("connected", () => this.setStatus("catching-up"));
    client.on("synced", () => {
      // Whatever went wrong on the way (a failed sync, a token fetch during the outage) is over.
      this.notice = "";
      this.setStatus("online");
      this.receipts.resendFailed();
      void this.refreshConversations();
      void this.refreshMutes().catch(() => undefined); // shown as unmuted until the next sync
    });
    client.on("disconnected", ({ willReconnect }) => {
      // Offline, we cannot know who is online; the SDK re-subscribes and reports afresh on reconnect.
      this.presence.clear();
      this.setStatus(willReconnect ? "reconnecting" : "signed-out");
    });
    client.on("message", ({ message }) => this.receive(message));
    // The server's data was replaced (restored from a backup): its seqs may be handed out again, so
    // what this tab holds by seq goes (messages, watermarks, receipts sent, group versions), and
    // comes again from the sync, the listing and the histories that follow.
    client.on("dataSetChanged", () => {
      for (const c of this.conversations.values()) forgetServerData(c);
      this.receipts.forget();
      this.onChange();
    });
    // After the message listeners (this.receive) of the messages it covers have run.
    client.on("checkpoint", (checkpoint) => this.saveCheckpoint(checkpoint));
    client.on("typing", ({ conversationId, userId, typing }) => {
      if (userId !== me) this.typing.update(conversationId, userId, typing);
    });
    client.on("presence", ({ userId, online }) => {
      this.presence.set(userId, online);
      this.onChange();
    });
    client.on("receipt", ({ conversationId, userId, seq, kind }) => {
      const c = this.conversations.get(conversationId);
      if (!c) return;
      if (userId === me && kind === "read")
        c.readSeq = Math.max(c.readSeq, seq); // another tab read it
      else if (kind === "read") raiseWatermark(c.peerRead, userId, seq);
      else if (kind === "delivered") raiseWatermark(c.peerDelivered, userId, seq);
      this.onChange();
    });
    client.on("conversation", (info) => {
      // A group of ours changed, here or elsewhere, or we were just added to one.
      const known = this.conversations.get(info.id);
      if (!known) {
        this.conversations.set(info.id, this.learnedNow(newConversationState(info)));
        void this.refreshConversations(); // its last message and history
      } else {
        this.applyNewSettings(known, info);
        known.isMember = true;
        if (this.openId === info.id) void this.loadMembers(known); // roles are not in the event
      }
      this.onChange();
    });
    client.on("error", (err) => {
      // A fire-and-forget request (typing) refused for membership: our list is stale, not the user
      // wrong; the refresh marks the group as left.
      if (err.reason === "NOT_MEMBER") return void this.refreshConversations();
      this.report(err);
    });
    document.addEventListener("visibilitychange", () => this.markOpenRead(), signal ? { signal } : {});
  }

  get open(): ConversationState | undefined {
    return this.openId === undefined ? undefined : this.conversations.get(this.openId);
  }

  /** A group's settings as an event or a reply has them: newer than any listing asked for before. */
  private applyNewSettings(c: ConversationState, info: Conversation): void {
    applyServerInfo(c, info);
    this.learnedNow(c);
  }

  /** Marks `c` as newer than any listing asked for until now. */
  private learnedNow(c: ConversationState): ConversationState {
    c.learnedAt = ++this.learned;
    return c;
  }

  /** Lists the conversations (the server's truth for names, last seqs and the read watermark). */
  refreshConversations(): Promise<void> {
    if (this.refreshing) {
      this.refreshAgain = true;
      return this.refreshing;
    }
    this.refreshing = (async () => {
      do {
        this.refreshAgain = false;
        const askedAt = this.learned;
        const list = await this.client.listConversations({ limit: CONVERSATIONS_LISTED });
        const listed = new Set(list.map((c) => c.id));
        // Removal sends no event: a group the server no longer lists may be one we were removed from,
        // or only older than the listing's newest conversations; the server says which. (A direct
        // conversation is listed only from its first message: a new one is not gone; nor is a group
        // created or joined after the listing was asked for, which it may not show.)
        const unlisted = [...this.conversations.values()].filter(
          (c) => c.kind === "group" && c.isMember && !listed.has(c.id) && c.learnedAt <= askedAt,
        );
        await inTurn(unlisted, (c) => this.confirmMembership(c, askedAt));
        for (const info of list) {
          const known = this.conversations.get(info.id);
          if (!known) this.conversations.set(info.id, newConversationState(info));
          else applyListed(known, info, askedAt);
        }
        this.onChange();
        await this.watchPresence(list.filter((c) => c.kind === "direct").map((c) => peerOf(c.id, this.me)));
        // The list shows each conversation's last message: fetch the newest page of those not loaded
        // (with their receipts). Those loaded before may have missed receipts while disconnected.
        const current = [...this.conversations.values()].filter((c) => c.isMember);
        await inTurn(current, (c) =>
          !c.historyLoaded ? this.loadHistory(c) : this.hasOwnMessages(c) ? this.loadReceipts(c) : undefined,
        );
      } while (this.refreshAgain);
    })()
      .catch((err: unknown) => this.report(err))
      .finally(() => {
        this.refreshing = undefined;
      });
    return this.refreshing;
  }

  /**
   * Asks the server whether the user is still in a group the listing did not show: NOT_MEMBER on its
   * roster means removed (unless the page learned otherwise since the listing was asked for).
   */
  private async confirmMembership(c: ConversationState, askedAt: number): Promise<void> {
    try {
      const listed = await this.client.listMembers(c.id);
      c.members = listed.members;
      c.roles = new Map(listed.roles.map((m) => [m.userId, m.role]));
      c.membersHasMore = listed.hasMore;
      // A large group's first page only: its count stays the one the conversation carries.
      if (!listed.hasMore) c.memberCount = c.members.length;
    } catch (err) {
      if (!(err instanceof SwitchboardClientError && err.reason === "NOT_MEMBER")) return; // ask next time
      if (c.learnedAt > askedAt || !c.isMember) return;
      c.isMember = false;
      this.unwatchStrangers();
    }
  }

  select(conversationId: string | undefined): void {
    if (this.openId !== conversationId) {
      this.typingSender.stop();
      // A half-done hand-over or a refused name belongs to the group they were asked in.
      this.confirmingOwner = undefined;
      this.renameError = "";
    }
    this.openId = conversationId;
    const c = this.open;
    if (c && !c.historyLoaded) void this.loadHistory(c);
    if (c?.kind === "group") void this.loadMembers(c);
    this.markOpenRead();
    this.onChange();
  }

  /**
   * Opens a conversation by id, one this tab may not have listed yet (a notification's, clicked
   * while the list was still loading): it is shown at once and filled in by the next refresh.
   */
  openById(conversationId: string): void {
    if (!this.conversations.has(conversationId)) {
      this.conversations.set(conversationId, newConversationState({ id: conversationId }));
      // Not connected yet: the refresh after the sync lists it.
      if (this.client.state === "open") void this.refreshConversations();
    }
    this.select(conversationId);
  }

  /**
   * Opens (or starts: the DM is created by its first message) a direct conversation. One the listing
   * did not show may still have a history (it is older than the listed ones): it is loaded now, or
   * by the refresh after the next sync; the server's NOT_MEMBER says there is none yet.
   */
  openDirect(peer: string): void {
    const id = directConversationId(this.me, peer);
    if (!this.conversations.has(id)) this.conversations.set(id, newConversationState({ id, kind: "direct" }));
    this.select(id);
  }

  async createGroup(name: string, members: string[]): Promise<void> {
    await this.attempt(async () => {
      const info = await this.client.createGroup({ name, members });
      const c = this.learnedNow(newConversationState(info));
      c.historyLoaded = true;
      this.conversations.set(info.id, c);
      this.select(info.id);
    });
  }

  /**
   * Joins an open group by its id (someone shared it) and opens it. Joining a group the user is in
   * already just opens it (the server answers with the group). False, with joinError set, if refused.
   */
  async joinGroup(conversationId: string): Promise<boolean> {
    try {
      const info = await this.client.joinGroup(conversationId);
      this.joinError = "";
      const known = this.conversations.get(info.id);
      if (known) {
        known.isMember = true; // rejoining a group the user had been removed from
        this.applyNewSettings(known, info);
      } else this.conversations.set(info.id, this.learnedNow(newConversationState(info)));
      this.select(info.id);
      // The listing brings the seqs the reply lacks, and has the SDK follow a pull-model group.
      void this.refreshConversations();
      return true;
    } catch (err) {
      this.joinError =
        (err instanceof SwitchboardClientError && JOIN_ERRORS[err.reason]) ||
        (err instanceof Error ? err.message : String(err));
      this.onChange();
      return false;
    }
  }

  /**
   * Changes the open group's settings (admins and the owner). Shown changed at once, over whatever the
   * server says until it answers, and put back if it refuses; NOTHING_TO_CHANGE means another admin
   * set the same meanwhile, which is fine.
   */
  async changeGroup(change: Partial<GroupSettings>): Promise<void> {
    const c = this.open;
    if (c?.kind !== "group") return;
    const changeNumber = ++this.settingsChanges;
    const before = { ...c.serverSettings };
    proposeSettings(c, change, changeNumber);
    this.learnedNow(c);
    this.onChange();
    for (let attempt = 1; ; attempt++) {
      // A setting the user changed again meanwhile is left to that later change: asking for this
      // value again now could put it back over theirs.
      const asked = stillProposed(c, change, changeNumber);
      if (Object.keys(asked).length === 0) break;
      try {
        const info = await this.client.updateGroup(c.id, asked);
        settleSettings(c, asked, changeNumber, true);
        this.applyNewSettings(c, info);
        this.notice = "";
        break;
      } catch (err) {
        if (!outcomeUnknown(err)) {
          const alreadySo = err instanceof SwitchboardClientError && err.reason === "NOTHING_TO_CHANGE";
          settleSettings(c, asked, changeNumber, alreadySo);
          if (!alreadySo) this.report(err);
          break;
        }
        // Cut off with the connection, or unanswered: it may or may not have run. What the server
        // has shown since decides, setting by setting: one it shows as asked ran; one it shows
        // changed otherwise was changed by another admin since, which asking again would undo; the
        // others are asked again (the SDK holds the request until it is connected).
        const { ran, overtaken, unseen } = sortOut(asked, before, c.serverSettings);
        settleSettings(c, ran, changeNumber, true);
        settleSettings(c, overtaken, changeNumber, false);
        const left = Object.keys(unseen).length > 0;
        if (left && attempt < GROUP_CHANGE_ATTEMPTS) continue;
        settleSettings(c, unseen, changeNumber, false);
        if (left || Object.keys(overtaken).length > 0) this.report(err);
        break;
      }
    }
    this.onChange();
  }

  /**
   * Renames the open group. The name is checked here against the server's default limit so the user
   * hears why at the field rather than as a refusal; leading and trailing spaces are dropped, since
   * nobody means them (the server keeps a name as sent). False, with renameError set, if not valid.
   */
  async renameGroup(name: string): Promise<boolean> {
    const trimmed = name.trim();
    const length = [...trimmed].length; // code points, as the server counts (docs/protocol.md)
    this.renameError =
      length === 0
        ? "A group needs a name."
        : length > GROUP_NAME_MAX
          ? `A group name has at most ${GROUP_NAME_MAX} characters.`
          : "";
    if (this.renameError) {
      this.onChange();
      return false;
    }
    await this.changeGroup({ name: trimmed });
    return true;
  }

  /** Messages the user wrote that the server has not acknowledged (kept in the outbox). */
  unsentCount(): number {
    return this.outbox.entries().length;
  }

  /** Forgets the messages not sent yet, on this device (the user signs out). */
  discardOutbox(): void {
    this.outbox.clear();
  }

  /**
   * The owner hands the open group over to another member: they become the owner and the user an
   * admin, in one change on the server. The roster is listed again to show both roles.
   */
  async handOver(userId: string): Promise<void> {
    const c = this.open;
    this.confirmingOwner = undefined;
    if (c?.kind !== "group") return;
    await this.attempt(async () => {
      this.applyNewSettings(c, await this.client.setMemberRole(c.id, userId, "owner"));
      await this.loadMembers(c);
    });
  }

  /**
   * Looks again at the open group's roster (the user's own role in it) and, with `listing`, at the
   * conversation list (its policies). The server's `conversation` event tells of changes as they
   * happen, but like typing it is best effort (not sent to a device that was offline), so the page
   * also asks when the user comes back to it, after a send refused for it, and while a member waits
   * in an admins-only group (chat-controls.ts).
   */
  async recheckOpenGroup(listing: boolean): Promise<void> {
    const c = this.open;
    if (this.client.state !== "open" || c?.kind !== "group" || !c.isMember) return;
    await Promise.all([this.loadMembers(c), listing ? this.refreshConversations() : undefined]);
  }

  /** The user is a plain member of the open admins-only group: the composer is off for them. */
  get openRestricted(): boolean {
    const c = this.open;
    return c?.isMember === true && postingRestricted(c, this.me);
  }

  async addMember(userId: string): Promise<void> {
    const c = this.open;
    if (!c) return;
    await this.attempt(async () => {
      const info = await this.client.addMembers(c.id, [userId]);
      c.memberCount = info.memberCount;
      await this.loadMembers(c);
    });
  }

  /** The owner makes a member an admin, or an admin a member again. */
  async setAdmin(userId: string, admin: boolean): Promise<void> {
    const c = this.open;
    if (!c) return;
    await this.attempt(async () => {
      await this.client.setMemberRole(c.id, userId, admin ? "admin" : "member");
      await this.loadMembers(c);
    });
  }

  /** Mutes the open conversation's push notifications (for all of this user's devices), or unmutes. */
  async toggleMute(): Promise<void> {
    const c = this.open;
    if (!c) return;
    await this.attempt(async () => {
      if (this.muted.has(c.id)) {
        await this.client.unmuteConversation(c.id);
        this.muted.delete(c.id);
      } else {
        await this.client.muteConversation(c.id);
        this.muted.add(c.id);
      }
      this.onChange();
    });
  }

  /** Which conversations are muted, as the server has them (another device may have changed them). */
  private async refreshMutes(): Promise<void> {
    const settings = await this.client.getNotificationSettings();
    this.muted = new Set(settings.muted.map((m) => m.conversationId));
    this.onChange();
  }

  async removeMember(userId: string): Promise<void> {
    const c = this.open;
    if (!c) return;
    await this.attempt(async () => {
      const info = await this.client.removeMembers(c.id, [userId]);
      c.memberCount = info.memberCount;
      await this.loadMembers(c);
    });
  }

  async leave(): Promise<void> {
    const c = this.open;
    if (!c) return;
    await this.attempt(async () => {
      await this.client.leaveGroup(c.id);
      this.conversations.delete(c.id);
      this.select(undefined);
      this.unwatchStrangers(); // the server would refuse to watch them again (NOT_A_CONTACT)
    });
  }

  /**
   * Sends with a client message id of our own, so the message shows at once ("queued" while
   * offline), and the SDK's retries after a reconnect, or this page's after a reload (the outbox),
   * reuse the id: the server stores it once.
   */
  send(body: string): void {
    const c = this.open;
    if (!c || body.trim() === "") return;
    this.typingSender.stop();
    const entry = { conversationId: c.id, clientMsgId: randomId(), body, createdAtMs: Date.now() };
    this.outbox.add(entry);
    this.transmit(entry);
  }

  /** Sends again what an earlier page of this user left unacknowledged (a reload, a closed tab). */
  resendOutbox(): void {
    for (const entry of this.outbox.entries()) this.transmit(entry);
  }

  private transmit(entry: OutboxEntry): void {
    let c = this.conversations.get(entry.conversationId);
    if (!c) {
      c = newConversationState({ id: entry.conversationId });
      this.conversations.set(c.id, c);
    }
    const conversation = c;
    const outgoing = { clientMsgId: entry.clientMsgId, body: entry.body, createdAtMs: entry.createdAtMs };
    conversation.outgoing.push(outgoing);
    this.onChange();
    this.client
      // The time it was written: after a reload too, the SDK gives up on it a day after (SEND_EXPIRED).
      .send({ conversationId: entry.conversationId }, entry.body, {
        clientMsgId: entry.clientMsgId,
        createdAtMs: entry.createdAtMs,
      })
      .then(
        (ack) => {
          this.outbox.remove(entry.clientMsgId);
          addMessage(conversation, { ...ack, sender: this.me, body: entry.body });
          this.watchContact(conversation); // the first message made the peer a contact
          this.markOpenRead();
          this.onChange();
        },
        (err: unknown) => {
          if (!refusedForGood(err)) {
            // The connection ended before the server answered (signed out, token refused, closed):
            // the message stays in the outbox, for the next time the chat opens.
            Object.assign(outgoing, { failure: KEPT_TEXT });
            this.onChange();
            return;
          }
          // Refused for good (e.g. no longer a member): kept on screen as "Not sent", not resent.
          this.outbox.remove(entry.clientMsgId);
          const reason = err instanceof SwitchboardClientError ? err.reason : "";
          if (reason === "NOT_MEMBER") void this.refreshConversations();
          // The group became admins-only, or the user stopped being an admin, after the page last
          // looked: say so on the message, and look again so the composer shows it too.
          if (reason === "POSTING_RESTRICTED")
            void (conversation.id === this.openId
              ? this.recheckOpenGroup(true)
              : this.refreshConversations());
          const failure =
            reason === "POSTING_RESTRICTED"
              ? POSTING_RESTRICTED_TEXT
              : reason === LocalReason.SEND_EXPIRED
                ? EXPIRED_TEXT
                : err instanceof Error
                  ? err.message
                  : String(err);
          // Given up unanswered a day after it was written (SEND_EXPIRED), it stays at the bottom,
          // where it is seen; refused by the server, where it was written.
          Object.assign(
            outgoing,
            reason === LocalReason.SEND_EXPIRED
              ? { failure }
              : { failure, refusedAfterSeq: conversation.lastSeq },
          );
          this.onChange();
        },
      );
  }

  /** The user typed in the composer, leaving `text` in it: typing, or (emptied) stopped. */
  composing(text: string): void {
    if (text === "") return this.typingSender.stop();
    const c = this.open;
    // A direct conversation exists on the server only from its first message: until then there is
    // no one to tell (the server would refuse with NOT_MEMBER).
    if (c?.isMember && (c.kind === "group" || c.lastSeq > 0)) this.typingSender.keystroke(c.id);
  }

  /** The page of history before the oldest loaded message; asked again while it loads, the same one. */
  loadOlder(): Promise<void> {
    const c = this.open;
    if (!c?.hasOlder) return Promise.resolve();
    let loading = this.loadingOlder.get(c.id);
    if (!loading) {
      loading = this.loadHistory(c, c.messages[0]?.seq).finally(() => this.loadingOlder.delete(c.id));
      this.loadingOlder.set(c.id, loading);
    }
    return loading;
  }

  /** The next page of a large group's members, after the last one shown. */
  loadMoreMembers(c: ConversationState): Promise<void> {
    let loading = this.loadingMoreMembers.get(c.id);
    if (!loading) {
      loading = this.attempt(() => this.readMoreMembers(c)).finally(() =>
        this.loadingMoreMembers.delete(c.id),
      );
      this.loadingMoreMembers.set(c.id, loading);
    }
    return loading;
  }

  private async readMoreMembers(c: ConversationState): Promise<void> {
    const after = c.members?.at(-1);
    if (!c.membersHasMore || after === undefined || this.client.state !== "open") return;
    const listed = await this.client.listMembers(c.id, { after });
    // The roster was read afresh meanwhile (a change to the group): this page follows another list.
    if (c.members?.at(-1) !== after) return;
    c.members = [...c.members, ...listed.members];
    for (const m of listed.roles) c.roles.set(m.userId, m.role);
    c.membersHasMore = listed.hasMore;
    if (!listed.hasMore) c.memberCount = c.members.length;
    this.onChange();
    if (c.delivery === "push") await this.watchPresence(listed.members);
  }

  async loadMembers(c: ConversationState): Promise<void> {
    if (this.client.state !== "open") return; // listed again when the panel is next opened
    await this.attempt(async () => {
      const listed = await this.client.listMembers(c.id);
      c.members = listed.members;
      c.roles = new Map(listed.roles.map((m) => [m.userId, m.role]));
      c.membersHasMore = listed.hasMore;
      // A large group's first page only: its count stays the one the conversation carries.
      if (!listed.hasMore) c.memberCount = c.members.length;
      this.onChange();
      // A pull-model group is large (past groups.pullThreshold): watching every member's presence
      // would exceed what one request may name (100) and what one connection may watch (1,000).
      if (c.delivery === "push") await this.watchPresence(c.members);
    });
  }

  private async loadHistory(c: ConversationState, beforeSeq?: number): Promise<void> {
    // Offline, a request would only time out: the refresh after the next sync loads it.
    if (this.client.state !== "open") return;
    if (!c.historyLoaded && beforeSeq === undefined) c.historyLoaded = true;
    try {
      const page = await this.client.history({
        conversationId: c.id,
        limit: HISTORY_PAGE,
        ...(beforeSeq === undefined ? {} : { beforeSeq }),
      });
      for (const m of page.messages) addMessage(c, m);
      c.hasOlder = page.hasMore;
      if (page.messages.length > 0) this.watchContact(c);
      if (beforeSeq === undefined && this.hasOwnMessages(c)) await this.loadReceipts(c);
      this.markOpenRead();
      this.onChange();
    } catch (err) {
      // A direct conversation exists on the server from its first message: none yet, nothing to show.
      const notYet =
        c.kind === "direct" && err instanceof SwitchboardClientError && err.reason === "NOT_MEMBER";
      if (notYet) return;
      if (beforeSeq === undefined) c.historyLoaded = false; // try again on the next refresh
      this.report(err);
    }
  }

  private hasOwnMessages(c: ConversationState): boolean {
    return c.messages.some((m) => m.sender === this.me);
  }

  /**
   * The members' watermarks as the server has them: what receipt events told while this page was
   * not connected (a reload, a new device, an outage). Shown on the user's own messages.
   */
  private async loadReceipts(c: ConversationState): Promise<void> {
    if (this.client.state !== "open") return;
    try {
      for (const r of await this.client.listReceipts(c.id)) {
        if (r.userId === this.me) {
          c.readSeq = Math.max(c.readSeq, r.readSeq);
          continue;
        }
        raiseWatermark(c.peerDelivered, r.userId, r.deliveredSeq);
        raiseWatermark(c.peerRead, r.userId, r.readSeq);
      }
      this.onChange();
    } catch (err) {
      this.report(err);
    }
  }

  private receive(m: ChatMessage): void {
    let c = this.conversations.get(m.conversationId);
    if (!c) {
      // A conversation this tab has not listed yet (someone wrote first, or added us to a group).
      c = newConversationState({ id: m.conversationId });
      this.conversations.set(c.id, c);
      void this.refreshConversations();
    }
    addMessage(c, m);
    this.watchContact(c);
    if (m.sender !== this.me) {
      this.typing.messageFrom(c.id, m.sender);
      this.receipts.mark("delivered", c.id, m.seq);
    }
    this.markOpenRead();
    this.onChange();
  }

  /** What the user has in front of them is read: the open conversation, while the tab is visible. */
  private markOpenRead(): void {
    const c = this.open;
    if (!c || !this.isVisible() || this.status === "signed-out") return;
    const newest = c.messages.at(-1)?.seq ?? 0;
    if (newest > c.readSeq) {
      c.readSeq = newest;
      this.receipts.mark("read", c.id, newest);
    }
  }

  /** The peer of a direct conversation with messages is a contact: the server lets us watch them. */
  private watchContact(c: ConversationState): void {
    if (c.kind === "direct") void this.watchPresence([peerOf(c.id, this.me)]);
  }

  /** Watches these users' presence, at most PRESENCE_TARGETS_PER_REQUEST a request. */
  private async watchPresence(users: string[]): Promise<void> {
    const fresh = [...new Set(users)].filter((u) => u !== this.me && !this.watched.has(u));
    if (fresh.length === 0) return;
    for (const u of fresh) this.watched.add(u);
    const chunks: string[][] = [];
    for (let i = 0; i < fresh.length; i += PRESENCE_TARGETS_PER_REQUEST)
      chunks.push(fresh.slice(i, i + PRESENCE_TARGETS_PER_REQUEST));
    await Promise.all(
      chunks.map(async (chunk) => {
        try {
          for (const s of await this.client.subscribePresence(chunk)) this.presence.set(s.userId, s.online);
          this.onChange();
        } catch (err) {
          for (const u of chunk) this.watched.delete(u);
          this.report(err);
        }
      }),
    );
  }

  /**
   * Stops watching users the user no longer shares a conversation with that this page knows of (they
   * left a group, or were removed): the server would refuse to watch them again on a reconnect.
   */
  private unwatchStrangers(): void {
    const contacts = new Set<string>();
    for (const c of this.conversations.values()) {
      if (c.kind === "direct") contacts.add(peerOf(c.id, this.me));
      else if (c.isMember) for (const m of c.members ?? []) contacts.add(m);
    }
    const strangers = [...this.watched].filter((u) => !contacts.has(u));
    if (strangers.length === 0) return;
    for (const u of strangers) {
      this.watched.delete(u);
      this.presence.delete(u);
    }
    this.onChange();
    // The SDK forgets them at once; the server's watch ends with the request, or with the connection.
    void this.client.unsubscribePresence(strangers).catch(() => undefined);
  }

  private setStatus(status: ConnectionStatus): void {
    this.status = status;
    this.onChange();
  }

  private async attempt(action: () => Promise<void>): Promise<void> {
    try {
      await action();
      this.notice = "";
    } catch (err) {
      this.report(err);
    }
    this.onChange();
  }

  private report(err: unknown): void {
    this.notice = noticeOf(err);
    this.onChange();
  }
}

/**
 * How often a group change is asked for while its outcome stays unknown (connection lost, no reply):
 * each attempt waits up to the SDK's request timeout for a connection and a reply.
 */
const GROUP_CHANGE_ATTEMPTS = 3;

/**
 * The settings of a change whose outcome is unknown, by what the server shows now (`now`) against
 * what it showed when the change was made (`before`): as asked (`ran`), changed to something else
 * (`overtaken`), or as before (`unseen`).
 */
function sortOut(
  asked: Partial<GroupSettings>,
  before: GroupSettings,
  now: GroupSettings,
): Record<"ran" | "overtaken" | "unseen", Partial<GroupSettings>> {
  const sorted = { ran: {}, overtaken: {}, unseen: {} };
  for (const [key, value] of Object.entries(asked) as [keyof GroupSettings, unknown][]) {
    const into =
      now[key] === value ? sorted.ran : now[key] !== before[key] ? sorted.overtaken : sorted.unseen;
    Object.assign(into, { [key]: value });
  }
  return sorted;
}

/** Whether a request may or may not have run, and asking again later may succeed. */
function outcomeUnknown(err: unknown): boolean {
  return (
    err instanceof SwitchboardClientError &&
    (err.reason === LocalReason.CONNECTION_LOST || err.reason === LocalReason.TIMEOUT)
  );
}

/**
 * Requests in flight at once for one refresh: a user in a thousand conversations must not send a
 * thousand frames in a second (the gateway drops frames past its burst, and closes a flood).
 */
const REFRESH_REQUESTS_AT_ONCE = 8;

/** Runs `fn` over `items`, at most REFRESH_REQUESTS_AT_ONCE at a time. */
async function inTurn<T>(items: readonly T[], fn: (item: T) => Promise<unknown> | undefined): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(REFRESH_REQUESTS_AT_ONCE, items.length) }, worker));
}
