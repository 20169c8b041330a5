/**
 * Draws the app from ChatApp's state into the static markup of web/index.html. Small regions are
 * redrawn whole; the conversation and message lists are updated in place (a click, or a screen
 * reader's reading of the log, must survive a redraw); focus and scroll position are kept.
 */
import { type ChatApp, type ConnectionStatus, POSTING_RESTRICTED_TEXT } from "./chat-app.js";
import {
  type ConversationState,
  type DeliveryState,
  deliveryStateOf,
  isChannel,
  isGroupAdmin,
  lastActivity,
  mayAddMembers,
  peerOf,
  postingRestricted,
  titleOf,
  unreadCount,
} from "./conversation-state.js";
import { byId, h } from "./dom.js";
import { typingLine } from "./typing.js";

const STATUS_TEXT: Record<ConnectionStatus, string> = {
  connecting: "Connecting…",
  "catching-up": "Catching up…",
  online: "Online",
  reconnecting: "Reconnecting…",
  "signed-out": "Signed out",
};

const STATE_TEXT: Record<DeliveryState, string> = {
  queued: "Queued (offline)",
  sending: "Sending…",
  failed: "Not sent",
  sent: "Sent",
  delivered: "Delivered",
  read: "Read",
};

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

export function render(app: ChatApp): void {
  const connection = byId("connection");
  connection.textContent = STATUS_TEXT[app.status];
  connection.dataset.status = app.status;
  byId("notice").textContent = app.notice;
  byId("join-error").textContent = app.joinError;
  renderConversationList(app);
  renderOpenConversation(app);
  document.body.classList.toggle("conversation-open", app.open !== undefined);
}

/**
 * Whether `user` is online: unknown until the server said (a peer with no message yet may not be
 * watched, NOT_A_CONTACT; nobody's is known while this page is disconnected).
 */
function presenceOf(app: ChatApp, user: string): "online" | "offline" | "unknown" {
  // The user is online exactly while this page is connected (nobody watches themselves).
  if (user === app.me) return app.status === "online" ? "online" : "offline";
  const online = app.presence.get(user);
  return online === undefined ? "unknown" : online ? "online" : "offline";
}

const PRESENCE_LABELS = {
  online: (user: string) => `${user} is online`,
  offline: (user: string) => `${user} is offline`,
  unknown: (user: string) => `${user}: not known whether online`,
};

function presenceDot(app: ChatApp, user: string): HTMLElement {
  const presence = presenceOf(app, user);
  return h("span", {
    class: `presence ${presence}`,
    attrs: { role: "img", "aria-label": PRESENCE_LABELS[presence](user) },
  });
}

function sortedConversations(app: ChatApp): ConversationState[] {
  const at = (c: ConversationState) => lastActivity(c)?.atMs ?? c.createdAtMs;
  return [...app.conversations.values()].sort((a, b) => at(b) - at(a));
}

/**
 * The list is rendered into the same entries every time: an entry (and its button) lives as long as
 * its conversation, and only its contents and its place change. Replacing or re-inserting the
 * buttons on every render (a message, a typing or presence event) would lose a click whose press
 * and release fall on either side of a render; the contents ignore the pointer (styles.css), so the
 * button is always the click's target.
 */
function renderConversationList(app: ChatApp): void {
  const list = byId("conversation-list");
  const focused = (document.activeElement as HTMLElement | null)?.dataset.conversationId;
  const entries = new Map<string, HTMLLIElement>();
  for (const li of Array.from(list.children) as HTMLLIElement[]) {
    const id = (li.firstElementChild as HTMLElement | null)?.dataset.conversationId;
    if (id !== undefined) entries.set(id, li);
  }
  const items = sortedConversations(app).map((c) => {
    let li = entries.get(c.id);
    if (!li) {
      li = h(
        "li",
        {},
        h("button", {
          class: "conversation",
          attrs: { type: "button", "data-conversation-id": c.id },
          onClick: () => app.select(c.id),
        }),
      );
    }
    fillConversationEntry(app, li.firstElementChild as HTMLButtonElement, c);
    return li;
  });
  // Moves only the entries out of place and drops those of conversations that are gone. An entry
  // taken out of the document between the press and the release of a click loses that click (the
  // browser forgets the pressed node), so one that stays where it is must not be touched.
  items.forEach((li, i) => {
    const here = list.children[i] ?? null;
    if (here !== li) list.insertBefore(li, here);
  });
  while (list.children.length > items.length) list.lastElementChild?.remove();
  if (focused) list.querySelector<HTMLElement>(`[data-conversation-id="${CSS.escape(focused)}"]`)?.focus();
}

function fillConversationEntry(app: ChatApp, button: HTMLButtonElement, c: ConversationState): void {
  const title = titleOf(c, app.me);
  const unread = unreadCount(c, app.me);
  const last = lastActivity(c);
  const preview = last
    ? `${last.sender && last.sender !== app.me ? "" : "You: "}${last.body}`
    : "No messages yet";
  if (c.id === app.openId) button.setAttribute("aria-current", "true");
  else button.removeAttribute("aria-current");
  const children: Node[] = [
    c.kind === "direct"
      ? presenceDot(app, peerOf(c.id, app.me))
      : h("span", { class: "group-icon", text: "#", attrs: { "aria-hidden": "true" } }),
    h(
      "span",
      { class: "conversation-heading" },
      h("span", { class: "conversation-title", text: title }),
      channelTag(c),
    ),
    h("span", { class: "conversation-preview", text: preview }),
  ];
  if (unread > 0)
    children.push(
      h("span", { class: "unread", text: String(unread), attrs: { "aria-label": `${unread} unread` } }),
    );
  button.replaceChildren(...children);
}

/** Why a group counts as a channel, for the tag's tooltip. */
function channelReason(c: ConversationState): string {
  return c.postPolicy === "admins"
    ? "Only admins post in this channel"
    : "A large group: no notifications while you are offline";
}

/** The small "Channel" tag of a channel's entry; its text is its accessible name. */
function channelTag(c: ConversationState): HTMLElement | undefined {
  if (!isChannel(c)) return undefined;
  return h("span", { class: "channel-tag", text: "Channel", attrs: { title: channelReason(c) } });
}

function renderOpenConversation(app: ChatApp): void {
  const c = app.open;
  const pane = byId("conversation");
  pane.hidden = c === undefined;
  byId("empty-state").hidden = c !== undefined;
  if (!c) return;
  byId("conversation-title").textContent = titleOf(c, app.me);
  const tag = byId("conversation-channel");
  tag.hidden = !isChannel(c);
  tag.title = channelReason(c);
  const headerPresence = byId("conversation-presence");
  if (c.kind === "direct") {
    const peer = peerOf(c.id, app.me);
    const presence = presenceOf(app, peer);
    headerPresence.replaceChildren(
      presenceDot(app, peer),
      h("span", { text: presence === "unknown" ? "" : presence }),
    );
  } else {
    headerPresence.textContent = c.memberCount === 1 ? "1 member" : `${c.memberCount} members`;
  }
  byId("members-toggle").hidden = c.kind !== "group" || !c.isMember;
  const mute = byId("mute-toggle");
  const muted = app.muted.has(c.id);
  mute.hidden = !c.isMember;
  mute.textContent = muted ? "Unmute" : "Mute";
  mute.setAttribute("aria-pressed", String(muted));
  if (c.kind !== "group" || !c.isMember) byId("members").hidden = true;
  byId("membership").textContent = c.isMember ? "" : "You are no longer a member of this group.";
  // Disabled before the user writes, rather than refused after (the server would answer
  // POSTING_RESTRICTED); the note says why.
  const restricted = c.isMember && postingRestricted(c, app.me);
  byId("composer-note").textContent = restricted ? `${POSTING_RESTRICTED_TEXT}.` : "";
  for (const id of ["composer-input", "composer-send"]) {
    byId<HTMLInputElement | HTMLButtonElement>(id).disabled = !c.isMember || restricted;
  }
  byId<HTMLInputElement>("composer-input").placeholder = restricted
    ? "Only admins post here"
    : "Write a message";
  renderMembers(app, c);
  renderGroupSettings(app, c);
  renderMessages(app, c);
  byId("typing").textContent = typingLine(app.typing.typing(c.id));
}

function renderMembers(app: ChatApp, c: ConversationState): void {
  // Admins and the owner remove others; nobody removes the owner (the server says so too).
  const myRole = c.roles.get(app.me);
  const mayRemove = (m: string) =>
    m !== app.me && myRole !== "member" && myRole !== undefined && c.roles.get(m) !== "owner";
  // A confirmation only the owner can give, for someone still a member.
  const confirming =
    myRole === "owner" && app.confirmingOwner !== undefined && c.members?.includes(app.confirmingOwner)
      ? app.confirmingOwner
      : undefined;
  const list = byId("member-list");
  // The list is drawn afresh: the button that had the focus (e.g. the "Make owner" just pressed with
  // the keyboard, now asking to confirm) gets it back, so a second Enter confirms.
  const focused = (document.activeElement as HTMLElement | null)?.dataset.focusKey;
  list.replaceChildren(
    ...(c.members ?? []).map((m) =>
      h(
        "li",
        { class: "member" },
        // A pull-model group's members are not watched (chat-app.ts): no dot rather than a wrong one.
        c.delivery === "push" && presenceDot(app, m),
        h("span", { class: "member-name", text: m === app.me ? `${m} (you)` : m }),
        c.roles.get(m) !== "member" && h("span", { class: "member-role", text: c.roles.get(m) ?? "" }),
        // The owner names admins.
        myRole === "owner" &&
          m !== app.me &&
          h("button", {
            class: "member-admin",
            text: c.roles.get(m) === "admin" ? "Remove admin" : "Make admin",
            attrs: {
              type: "button",
              "aria-label": `${c.roles.get(m) === "admin" ? "Remove admin" : "Make admin"} ${m}`,
              "data-focus-key": `admin:${m}`,
            },
            onClick: () => void app.setAdmin(m, c.roles.get(m) !== "admin"),
          }),
        // The owner hands the group over: asked twice on the same button, since it cannot be taken
        // back (only the new owner could hand it back).
        myRole === "owner" &&
          m !== app.me &&
          h("button", {
            class: "member-owner",
            text: confirming === m ? "Confirm: make owner" : "Make owner",
            attrs: {
              type: "button",
              "aria-label": `${confirming === m ? "Confirm: make owner" : "Make owner"} ${m}`,
              "aria-describedby": "handover-note",
              "data-focus-key": `owner:${m}`,
              ...(confirming === m ? { "data-confirming": "" } : {}),
            },
            onClick: () => {
              if (app.confirmingOwner === m) void app.handOver(m);
              else {
                app.confirmingOwner = m;
                app.onChange();
              }
            },
          }),
        mayRemove(m) &&
          h("button", {
            class: "remove-member",
            text: "×",
            attrs: {
              type: "button",
              "aria-label": `Remove ${m}`,
              title: `Remove ${m}`,
              "data-focus-key": `remove:${m}`,
            },
            onClick: () => void app.removeMember(m),
          }),
      ),
    ),
  );
  if (focused) list.querySelector<HTMLElement>(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus();
  byId("more-members").hidden = !c.membersHasMore;
  byId("handover-note").textContent = confirming
    ? `Press "Confirm: make owner" to make ${confirming} the owner; you will stay an admin. Escape cancels.`
    : "";
}

/** The group's id to share, and its settings: changed by admins and the owner, shown to everyone. */
function renderGroupSettings(app: ChatApp, c: ConversationState): void {
  const idField = byId<HTMLInputElement>("group-id");
  if (idField.value !== c.id) {
    idField.value = c.id;
    byId("copy-status").textContent = "";
  }
  const admin = isGroupAdmin(c, app.me);
  byId<HTMLFieldSetElement>("group-settings").disabled = !admin;
  byId("group-settings-hint").hidden = admin;
  byId<HTMLInputElement>("group-open").checked = c.open;
  byId<HTMLInputElement>("group-admins-post").checked = c.postPolicy === "admins";
  byId<HTMLInputElement>("group-admins-add").checked = c.addPolicy === "admins";
  // The name field shows the group's name, except while the user is editing it: it is filled again
  // when another group is shown, or when the name changed and the user is not in the field.
  const nameField = byId<HTMLInputElement>("group-name");
  if (
    nameField.dataset.conversationId !== c.id ||
    (nameField.dataset.shownName !== c.name && document.activeElement !== nameField)
  ) {
    nameField.value = c.name;
    nameField.dataset.conversationId = c.id;
    nameField.dataset.shownName = c.name;
  }
  byId("group-name-error").textContent = app.renameError;
  // Not offered where the server would refuse it (NOT_ADMIN): a plain member of an admins-add group.
  byId("add-member").hidden = !mayAddMembers(c, app.me);
}

/** What one entry of the message list shows. */
interface MessageView {
  /** Stays the same from the queued copy to the acknowledged message, so its entry stays too. */
  key: string;
  mine: boolean;
  sender: string;
  body: string;
  atMs: number;
  /** The acknowledged message's seq; undefined for one not acknowledged. */
  seq: number | undefined;
  state: DeliveryState | undefined;
  failure: string | undefined;
  attrs: Record<string, string>;
}

/**
 * The list is a live region (role=log): a screen reader reads out what is added to it. So it is
 * updated in place, like the conversation list: an entry lives as long as its message, only what
 * changed in it is touched (a delivery state, a failure), and only new messages are added. A typing
 * or presence event changes nothing in it; redrawing it whole would have the log read out again.
 */
function renderMessages(app: ChatApp, c: ConversationState): void {
  const scroller = byId("messages");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
  const shownId = scroller.dataset.conversationId;
  byId("load-older").hidden = !c.hasOlder;
  const offline = app.status !== "online";
  const views: MessageView[] = c.messages.map((m) => {
    const mine = m.sender === app.me;
    return {
      key: messageKey(m.sender, m.clientMsgId, m.seq),
      mine,
      sender: m.sender,
      body: m.body,
      atMs: m.createdAtMs,
      seq: m.seq,
      state: mine ? deliveryStateOf(c, m, app.me) : undefined,
      failure: undefined,
      attrs: { "data-seq": String(m.seq), "data-client-msg-id": m.clientMsgId },
    };
  });
  for (const o of c.outgoing) {
    // One the server refused stays where it was written, after the messages it came after (by
    // seq: the server's order, not a comparison of two clocks); one being sent, or kept for later
    // or given up unanswered, is the newest until an ack places it by seq.
    let at = views.length;
    const after = o.refusedAfterSeq;
    if (after !== undefined) while (at > 0 && (views[at - 1]!.seq ?? Number.POSITIVE_INFINITY) > after) at--;
    views.splice(at, 0, {
      key: messageKey(app.me, o.clientMsgId, 0),
      mine: true,
      sender: app.me,
      body: o.body,
      atMs: o.createdAtMs,
      seq: undefined,
      state: o.failure ? "failed" : offline ? "queued" : "sending",
      // Why it was not sent, under the message it concerns.
      failure: o.failure,
      attrs: { "data-client-msg-id": o.clientMsgId },
    });
  }
  const list = byId("message-list");
  const entries = new Map<string, HTMLLIElement>();
  // Another conversation's entries are not reused: its keys may recur here.
  if (shownId === c.id) {
    for (const li of Array.from(list.children) as HTMLLIElement[]) {
      if (li.dataset.key !== undefined) entries.set(li.dataset.key, li);
    }
  }
  const items = views.map((view) => {
    const li = entries.get(view.key);
    entries.delete(view.key); // a key twice (it should not be): the second gets an entry of its own
    return li ? updateMessageItem(li, view) : messageItem(view);
  });
  items.forEach((li, i) => {
    const here = list.children[i] ?? null;
    if (here !== li) list.insertBefore(li, here);
  });
  while (list.children.length > items.length) list.lastElementChild?.remove();
  // Stay at the newest message unless the user scrolled up to read; keep the view put when older
  // messages were added above.
  scroller.dataset.conversationId = c.id;
  if (shownId !== c.id || fromBottom < 40) scroller.scrollTop = scroller.scrollHeight;
  else scroller.scrollTop = scroller.scrollHeight - scroller.clientHeight - fromBottom;
}

/** A message's entry key: the sender's client message id (the server's key too), else its seq. */
function messageKey(sender: string, clientMsgId: string, seq: number): string {
  return clientMsgId !== "" ? `${sender}\n${clientMsgId}` : `seq:${seq}`;
}

function messageItem(view: MessageView): HTMLLIElement {
  const li = h(
    "li",
    { class: messageClass(view), attrs: { ...view.attrs, "data-key": view.key } },
    h("span", { class: "sender", text: view.mine ? "You" : view.sender }),
    // dir=auto: a right-to-left body (or one with direction overrides) is laid out on its own.
    h("p", { class: "body", text: view.body, attrs: { dir: "auto" } }),
    h("span", { class: "meta" }, timeOf(view.atMs)),
  );
  return updateMessageItem(li, view);
}

function messageClass(view: MessageView): string {
  return `message ${view.mine ? "mine" : "theirs"}`;
}

function timeOf(atMs: number): HTMLTimeElement {
  return h("time", { text: timeFormat.format(atMs), attrs: { datetime: new Date(atMs).toISOString() } });
}

/** Brings an entry up to date, touching only what differs (each change is read out). */
function updateMessageItem(li: HTMLLIElement, view: MessageView): HTMLLIElement {
  if (li.className !== messageClass(view)) li.className = messageClass(view);
  for (const [name, value] of Object.entries(view.attrs)) {
    if (li.getAttribute(name) !== value) li.setAttribute(name, value);
  }
  setText(li.querySelector(".sender"), view.mine ? "You" : view.sender);
  setText(li.querySelector(".body"), view.body);
  const meta = li.querySelector<HTMLElement>(".meta")!;
  const time = meta.querySelector("time")!;
  const datetime = new Date(view.atMs).toISOString();
  if (time.getAttribute("datetime") !== datetime) time.replaceWith(timeOf(view.atMs));
  let delivery = meta.querySelector<HTMLElement>(".delivery");
  if (view.state === undefined) delivery?.remove();
  else {
    if (!delivery) {
      delivery = h("span", { class: "delivery" });
      meta.append(delivery);
    }
    if (delivery.dataset.state !== view.state) delivery.dataset.state = view.state;
    setText(delivery, STATE_TEXT[view.state]);
  }
  let failure = li.querySelector<HTMLElement>(":scope > .failure");
  if (view.failure === undefined) failure?.remove();
  else {
    if (!failure) {
      failure = h("span", { class: "failure" });
      li.append(failure);
    }
    setText(failure, view.failure);
  }
  return li;
}

function setText(el: Element | null, text: string): void {
  if (el && el.textContent !== text) el.textContent = text;
}

/**
 * Forgets what an app drew that a later one would reuse: the conversation list's and the message
 * log's items keep handlers bound to the app that made them (a sign-in that was refused).
 */
export function forgetDrawn(): void {
  byId("conversation-list").replaceChildren();
  byId("message-list").replaceChildren();
  delete byId("messages").dataset.conversationId;
}
