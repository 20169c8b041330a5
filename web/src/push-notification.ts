/**
 * What the service worker and the page agree on about push notifications: how the server's Web Push
 * payload (README "Payloads") becomes a notification, the message the worker posts to a page when
 * the user clicks one, and the link that opens a conversation in a new window. Pure: no DOM and no
 * worker globals, so both bundles import it and unit tests run it in Node.
 */

/** What a notification carries for its click. */
export interface NotificationData {
  conversationId: string | undefined;
  notificationId: string | undefined;
}

export interface ShownNotification {
  title: string;
  options: NotificationOptions & { data: NotificationData };
}

const text = (value: unknown): string | undefined =>
  typeof value === "string" && value !== "" ? value : undefined;

/**
 * The notification for one push. The server decides the words (the sender as title, the message or,
 * in privacy mode, "New message" as body; a burst's summary carries its latest message), so they are
 * shown as sent. The conversation is the tag: a burst's summary replaces its first notification
 * instead of stacking under it, as the server's collapse key intends. A payload that is not the
 * server's (not JSON, fields missing) still shows something: with `userVisibleOnly` every push must.
 */
export function notificationOf(payload: unknown): ShownNotification {
  const p = typeof payload === "object" && payload !== null ? (payload as Record<string, unknown>) : {};
  const conversationId = text(p.conversation_id);
  return {
    title: text(p.title) ?? "Switchboard",
    options: {
      body: text(p.body) ?? "New message",
      ...(conversationId === undefined ? {} : { tag: conversationId }),
      data: { conversationId, notificationId: text(p.notification_id) },
    },
  };
}

/** What the service worker posts to a page whose user clicked a notification. */
export interface OpenConversationMessage {
  type: "open-conversation";
  conversationId: string;
}

export function openConversationMessage(conversationId: string): OpenConversationMessage {
  return { type: "open-conversation", conversationId };
}

/** The conversation a message from the service worker asks to open, if it is one. */
export function conversationToOpen(message: unknown): string | undefined {
  if (typeof message !== "object" || message === null) return undefined;
  const m = message as Record<string, unknown>;
  return m.type === "open-conversation" ? text(m.conversationId) : undefined;
}

/**
 * A link to the app (`base`: the service worker's scope) that opens a conversation once signed in.
 * The fragment, not the query: `?server=` would make the page ask for a sign-in, and a fragment
 * never reaches a server.
 */
export function conversationLink(base: string, conversationId: string): string {
  const url = new URL(base);
  url.hash = `conversation=${encodeURIComponent(conversationId)}`;
  return url.href;
}

/** The conversation a location's fragment names (from `conversationLink`), if any. */
export function conversationInFragment(hash: string): string | undefined {
  const value = new URLSearchParams(hash.replace(/^#/, "")).get("conversation");
  return value === null || value === "" ? undefined : value;
}
