/**
 * The web client's service worker: keeps the app's own files (the "shell") so the page opens even
 * while the server is down, e.g. a reload during an outage; the SDK then shows "Reconnecting…" and
 * the outbox waits. Network first: a reachable server always serves the current build, and the
 * cache only answers when it is not. Nothing else (API, WebSocket) goes through here.
 *
 * It also shows the Web Push notifications the server sends while none of the user's devices is
 * connected (the page subscribes, web-push.ts), and a click on one opens its conversation.
 */
import {
  conversationLink,
  type NotificationData,
  notificationOf,
  openConversationMessage,
} from "./push-notification.js";

// Only what this file uses of the ServiceWorkerGlobalScope (the project's TypeScript lib is DOM).
interface ExtendableEvent extends Event {
  waitUntil(work: Promise<unknown>): void;
}
interface FetchEvent extends ExtendableEvent {
  readonly request: Request;
  respondWith(response: Promise<Response>): void;
}
interface PushEvent extends ExtendableEvent {
  readonly data: { json(): unknown; text(): string } | null;
}
interface NotificationEvent extends ExtendableEvent {
  readonly notification: Notification;
}
interface WindowClient {
  readonly url: string;
  readonly focused: boolean;
  focus(): Promise<WindowClient>;
  postMessage(message: unknown): void;
}
interface WorkerScope {
  readonly registration: ServiceWorkerRegistration;
  readonly clients: {
    claim(): Promise<void>;
    matchAll(options: { type: "window"; includeUncontrolled: boolean }): Promise<readonly WindowClient[]>;
    openWindow(url: string): Promise<WindowClient | null>;
  };
  skipWaiting(): Promise<void>;
  addEventListener(type: "install" | "activate", listener: (event: ExtendableEvent) => void): void;
  addEventListener(type: "fetch", listener: (event: FetchEvent) => void): void;
  addEventListener(type: "push", listener: (event: PushEvent) => void): void;
  addEventListener(type: "notificationclick", listener: (event: NotificationEvent) => void): void;
}

const worker = self as unknown as WorkerScope;
const CACHE = "switchboard-shell-v1";
/** The build's files, relative to the worker's scope (the page's directory, on any host). */
const SHELL = ["./", "index.html", "app.js", "switchboard-sdk.js", "styles.css", "favicon.svg"];
const shellUrls = () => new Set(SHELL.map((path) => new URL(path, worker.registration.scope).href));

worker.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll([...shellUrls()]))
      .then(() => worker.skipWaiting()),
  );
});

worker.addEventListener("activate", (event) => {
  // Control the page that registered us at once, so even its first reload works offline.
  event.waitUntil(worker.clients.claim());
});

worker.addEventListener("fetch", (event) => {
  const { request } = event;
  const url = new URL(request.url);
  url.search = "";
  if (request.method !== "GET" || !shellUrls().has(url.href)) return;
  event.respondWith(
    fetch(request).then(
      (response) => {
        if (response.ok) {
          const copy = response.clone();
          void caches.open(CACHE).then((cache) => cache.put(url.href, copy));
        }
        return response;
      },
      async (err: unknown) => {
        const cached = await caches.match(url.href);
        if (cached) return cached;
        throw err;
      },
    ),
  );
});

worker.addEventListener("push", (event) => {
  // Chrome requires a notification for every push (userVisibleOnly): a payload that is not JSON
  // still shows one, with its text as the body.
  let payload: unknown;
  try {
    payload = event.data?.json();
  } catch {
    payload = { body: event.data?.text() };
  }
  const { title, options } = notificationOf(payload);
  event.waitUntil(worker.registration.showNotification(title, options));
});

worker.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const { conversationId } = (event.notification.data ?? {}) as Partial<NotificationData>;
  event.waitUntil(openApp(conversationId));
});

/**
 * Brings the app to the front: a window of it that is open (the focused one first), asked to open
 * the conversation, or else a new window on a link to it.
 */
async function openApp(conversationId: string | undefined): Promise<void> {
  const scope = worker.registration.scope;
  const windows = (await worker.clients.matchAll({ type: "window", includeUncontrolled: true })).filter((c) =>
    c.url.startsWith(scope),
  );
  const open = windows.find((c) => c.focused) ?? windows[0];
  if (!open) {
    await worker.clients.openWindow(
      conversationId === undefined ? scope : conversationLink(scope, conversationId),
    );
    return;
  }
  // Focusing may be refused (the browser decides what a click allows); the page still opens the
  // conversation for when the user gets there.
  await open.focus().catch(() => undefined);
  if (conversationId !== undefined) open.postMessage(openConversationMessage(conversationId));
}
