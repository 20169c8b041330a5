/**
 * Opens the chat for signed-in credentials: remembers the session, picks the inbox position to
 * start from, makes the SDK client and the ChatApp, and shows them.
 */
import { SwitchboardClient, type WelcomeInfo } from "../../sdk/src/index.js";
import { ChatApp } from "./chat-app.js";
import { wireChat } from "./chat-controls.js";
import { byId } from "./dom.js";
import { CheckpointStore, Outbox, type StoredSession, sessionStore } from "./local-store.js";
import { wireNotifications } from "./notifications.js";
import { forgetDrawn, render } from "./render.js";
import { type Credentials, type Discovery, discover } from "./sign-in.js";
import { WebPush } from "./web-push.js";

/**
 * Opens the chat for these credentials. `resumed`: the page reopened a remembered session, which
 * must work while the server is down (the SDK keeps trying; the page shows "Reconnecting…"), so it
 * asks the server nothing it remembered.
 */
export async function openChat(
  credentials: Credentials,
  server: string,
  resumed: StoredSession | undefined,
  confirmed = false,
): Promise<void> {
  localStorage.setItem("switchboard:server", server);
  localStorage.setItem("switchboard:user", credentials.userId);
  let discovered: Discovery | undefined;
  let url: string;
  if (resumed) url = resumed.gatewayUrl;
  else {
    discovered = await discover(server);
    url = discovered.url;
  }
  const checkpoints = new CheckpointStore(server, credentials.userId);
  if (checkpoints.load() === undefined) {
    const { headCursor, dataSet } = await inboxHead(url, credentials);
    checkpoints.start(headCursor, dataSet);
  }
  const remember = () =>
    sessionStore.save({
      server,
      gatewayUrl: url,
      userId: credentials.userId,
      token: credentials.current(),
      source: credentials.source,
      ...(credentials.tokenUrl === undefined ? {} : { tokenUrl: credentials.tokenUrl }),
      ...(confirmed ? { confirmed: true as const } : {}),
    });
  // A remembered session reopened here: unless it was signed out of (or another user signed in) in
  // another tab while this one was getting ready; this tab then follows that, as below.
  const ours = (stored: StoredSession | undefined) =>
    stored?.userId === credentials.userId && stored.server === server;
  if (resumed && !ours(sessionStore.load())) {
    location.reload();
    return;
  }
  remember();
  // Where this device left off: the inbox cursor and the large groups' positions (tabs of one
  // browser share them; each value keeps the highest any tab processed).
  const client = new SwitchboardClient({ url, token: credentials.token, checkpoint: checkpoints.load() });
  // What this sign-in wires into the page, undone if it fails (the user signs in again on this page).
  const wired = new AbortController();
  const app = new ChatApp(
    client,
    credentials.userId,
    (checkpoint) => checkpoints.save(checkpoint),
    new Outbox(server, credentials.userId),
    undefined,
    wired.signal,
  );
  // A renewed dev token is remembered too; but not over a sign-out, or another user's sign-in, in
  // another tab (this tab is then on its way to follow it, below).
  client.on("connected", () => {
    if (ours(sessionStore.load())) remember();
  });
  // Signed out, or signed in as someone else, in another tab of this browser: this one follows, by
  // reloading into what is stored now (the sign-in form, or the other session).
  window.addEventListener(
    "storage",
    (event) => {
      if (!sessionStore.changedBy(event.key) || ours(sessionStore.load())) return; // a renewed token
      wired.abort();
      client
        .close()
        .catch(() => undefined) // going away all the same
        .finally(() => location.reload());
    },
    { signal: wired.signal },
  );
  // For whoever looks into a connection that came and went (the console is all a page has).
  client.on("disconnected", ({ code, reason, willReconnect }) =>
    console.info(
      `switchboard: connection closed (${code}${reason ? `, ${reason}` : ""})${willReconnect ? "; reconnecting" : ""}`,
    ),
  );
  let drawScheduled = false;
  app.onChange = () => {
    if (drawScheduled || wired.signal.aborted) return;
    drawScheduled = true;
    requestAnimationFrame(() => {
      drawScheduled = false;
      if (!wired.signal.aborted) render(app);
    });
  };
  byId("sign-in").hidden = true;
  byId("app").hidden = false;
  byId("me").textContent = credentials.userId;
  const push = new WebPush(client, `switchboard:push:${server}:${credentials.userId}`);
  // Once connected: a resumed session asked the server nothing yet, and whether it has Web Push (and
  // with which key) may have changed since the session began.
  client.once("synced", () => {
    void (discovered ? Promise.resolve(discovered) : discover(server)).then((d) =>
      push.start(d.webPushPublicKey),
    );
  });
  wireChat(app, push, wired.signal);
  wireNotifications(app, push, wired.signal);
  app.resendOutbox();
  render(app);
  if (resumed) {
    // A terminal refusal (e.g. the token was revoked) shows as "Signed out" with the reason.
    client.connect().catch(() => sessionStore.clear());
    return;
  }
  try {
    await client.connect();
  } catch (err) {
    // Refused (e.g. a bad token): the sign-in form comes back, and this attempt's app is gone.
    wired.abort();
    forgetDrawn();
    await client.close();
    // Nor is its session one to open again on the next load.
    if (sessionStore.load()?.token === credentials.current()) sessionStore.clear();
    throw err;
  }
}

/**
 * Where a device new to this user starts its inbox: at the head. Syncing a whole inbox from 0 would
 * load every message ever sent to the user; the conversation list and each conversation's newest
 * page of history show what matters, and older pages load as the user scrolls. One short
 * connection without sync asks the server for the head (the welcome carries it, and the data set
 * it belongs to).
 */
async function inboxHead(url: string, credentials: Credentials): Promise<WelcomeInfo> {
  const probe = new SwitchboardClient({ url, token: credentials.token, autoSync: false });
  try {
    return await probe.connect({ timeoutMs: 10_000 });
  } finally {
    await probe.close();
  }
}
