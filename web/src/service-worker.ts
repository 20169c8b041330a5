/**
 * The web client's service worker: keeps the app's own files (the "shell") so the page opens even
 * while the server is down, e.g. a reload during an outage; the SDK then shows "Reconnecting…" and
 * the outbox waits. Network first: a reachable server always serves the current build, and the
 * cache only answers when it is not. Nothing else (API, WebSocket) goes through here.
 */

// Only what this file uses of the ServiceWorkerGlobalScope (the project's TypeScript lib is DOM).
interface ExtendableEvent extends Event {
  waitUntil(work: Promise<unknown>): void;
}
interface FetchEvent extends ExtendableEvent {
  readonly request: Request;
  respondWith(response: Promise<Response>): void;
}
interface WorkerScope {
  readonly registration: { readonly scope: string };
  readonly clients: { claim(): Promise<void> };
  skipWaiting(): Promise<void>;
  addEventListener(type: "install" | "activate", listener: (event: ExtendableEvent) => void): void;
  addEventListener(type: "fetch", listener: (event: FetchEvent) => void): void;
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
