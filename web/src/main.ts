/**
 * The reference web client's entry point: the sign-in form, then the chat, wired to the DOM of
 * web/index.html. All protocol work is the SDK's (imported from the bundle it ships).
 */
import { SwitchboardClient } from "../../sdk/src/index.js";
import { ChatApp } from "./chat-app.js";
import { byId } from "./dom.js";
import { Outbox, type StoredSession, sessionStore } from "./local-store.js";
import { render } from "./render.js";
import {
  type Credentials,
  devTokenUrl,
  fetchedToken,
  gatewayUrl,
  normalizeServer,
  pastedToken,
} from "./sign-in.js";

const USER_ID = /^[A-Za-z0-9._@:+-]{1,128}$/;

function inputValue(id: string): string {
  return byId<HTMLInputElement | HTMLTextAreaElement>(id).value.trim();
}

function showSignInError(message: string): void {
  byId("sign-in-error").textContent = message;
}

/**
 * Opens the chat for these credentials. `resumed`: the page reopened a remembered session, which
 * must work while the server is down (the SDK keeps trying; the page shows "Reconnecting…"), so it
 * asks the server nothing it remembered.
 */
async function signIn(
  credentials: Credentials,
  server: string,
  resumed: StoredSession | undefined,
): Promise<void> {
  localStorage.setItem("switchboard:server", server);
  localStorage.setItem("switchboard:user", credentials.userId);
  const url = resumed?.gatewayUrl ?? (await gatewayUrl(server));
  const cursorKey = `switchboard:cursor:${server}:${credentials.userId}`;
  if (localStorage.getItem(cursorKey) === null) {
    localStorage.setItem(cursorKey, String(await inboxHead(url, credentials)));
  }
  const remember = () =>
    sessionStore.save({
      server,
      gatewayUrl: url,
      userId: credentials.userId,
      token: credentials.current(),
      source: credentials.source,
      ...(credentials.tokenUrl === undefined ? {} : { tokenUrl: credentials.tokenUrl }),
    });
  remember();
  const client = new SwitchboardClient({
    url,
    token: credentials.token,
    cursor: Number(localStorage.getItem(cursorKey)),
  });
  // Tabs of one browser share the stored cursor; each keeps the highest it processed.
  const saveCursor = (cursor: number) => {
    if (cursor > Number(localStorage.getItem(cursorKey) ?? 0))
      localStorage.setItem(cursorKey, String(cursor));
  };
  const app = new ChatApp(client, credentials.userId, saveCursor, new Outbox(server, credentials.userId));
  client.on("connected", remember); // a renewed dev token is remembered too
  let drawScheduled = false;
  app.onChange = () => {
    if (drawScheduled) return;
    drawScheduled = true;
    requestAnimationFrame(() => {
      drawScheduled = false;
      render(app);
    });
  };
  byId("sign-in").hidden = true;
  byId("app").hidden = false;
  byId("me").textContent = credentials.userId;
  wireChat(app);
  app.resendOutbox();
  render(app);
  if (resumed) {
    // A terminal refusal (e.g. the token was revoked) shows as "Signed out" with the reason.
    client.connect().catch(() => sessionStore.clear());
  } else {
    await client.connect();
  }
}

/**
 * Where a device new to this user starts its inbox: at the head. Syncing a whole inbox from 0 would
 * load every message ever sent to the user; the conversation list and each conversation's newest
 * page of history show what matters, and older pages load as the user scrolls. One short
 * connection without sync asks the server for the head (the welcome carries it).
 */
async function inboxHead(url: string, credentials: Credentials): Promise<number> {
  const probe = new SwitchboardClient({ url, token: credentials.token, autoSync: false });
  try {
    return (await probe.connect({ timeoutMs: 10_000 })).headCursor;
  } finally {
    await probe.close();
  }
}

function wireChat(app: ChatApp): void {
  const composer = byId<HTMLInputElement>("composer-input");
  byId("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    app.send(composer.value);
    composer.value = "";
  });
  composer.addEventListener("input", () => {
    if (composer.value !== "") app.composing();
  });
  byId("new-chat").addEventListener("submit", (e) => {
    e.preventDefault();
    const peer = inputValue("new-chat-user");
    if (!USER_ID.test(peer)) {
      app.notice = `"${peer}" is not a valid user id`;
      app.onChange();
      return;
    }
    byId<HTMLInputElement>("new-chat-user").value = "";
    app.openDirect(peer);
    // The conversation pane appears with the next frame's render; focus it after that.
    requestAnimationFrame(() => requestAnimationFrame(() => composer.focus()));
  });
  byId("new-group").addEventListener("submit", (e) => {
    e.preventDefault();
    const members = inputValue("new-group-members")
      .split(/[\s,]+/)
      .filter(Boolean);
    void app.createGroup(inputValue("new-group-name"), members).then(() => {
      byId<HTMLInputElement>("new-group-name").value = "";
      byId<HTMLInputElement>("new-group-members").value = "";
    });
  });
  byId("add-member").addEventListener("submit", (e) => {
    e.preventDefault();
    const user = inputValue("add-member-user");
    byId<HTMLInputElement>("add-member-user").value = "";
    if (user) void app.addMember(user);
  });
  byId("leave-group").addEventListener("click", () => void app.leave());
  byId("back").addEventListener("click", () => app.select(undefined));
  const membersToggle = byId("members-toggle");
  membersToggle.addEventListener("click", () => {
    const panel = byId("members");
    panel.hidden = !panel.hidden;
    membersToggle.setAttribute("aria-expanded", String(!panel.hidden));
    const open = app.open;
    if (!panel.hidden && open) void app.loadMembers(open);
  });
  byId("load-older").addEventListener("click", () => void app.loadOlder());
  const scroller = byId("messages");
  scroller.addEventListener("scroll", () => {
    if (scroller.scrollTop < 40) void app.loadOlder();
  });
  byId("sign-out").addEventListener("click", () => {
    sessionStore.clear();
    void app.client.close().then(() => location.reload());
  });
  // Nothing tells a user they were added to a group until its first message: look again whenever
  // they come back to the tab.
  window.addEventListener("focus", () => {
    if (app.status === "online") void app.refreshConversations();
  });
}

function wireSignIn(): void {
  const params = new URLSearchParams(location.search);
  const serverInput = byId<HTMLInputElement>("server");
  serverInput.value = params.get("server") ?? localStorage.getItem("switchboard:server") ?? location.origin;
  byId<HTMLInputElement>("user-id").value = localStorage.getItem("switchboard:user") ?? "";
  const attempt = async (credentials: () => Promise<Credentials>, resumed?: StoredSession) => {
    showSignInError("");
    try {
      const server = resumed?.server ?? normalizeServer(serverInput.value);
      await signIn(await credentials(), server, resumed);
    } catch (err) {
      byId("sign-in").hidden = false;
      byId("app").hidden = true;
      showSignInError(err instanceof Error ? err.message : String(err));
    }
  };
  const remembered = (token: string) => {
    const session = sessionStore.load();
    if (session) sessionStore.save({ ...session, token });
  };
  byId("sign-in-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const userId = inputValue("user-id");
    if (!USER_ID.test(userId)) return showSignInError("A user id is 1-128 of A-Z a-z 0-9 . _ @ : + -");
    const server = normalizeServer(serverInput.value);
    void attempt(() => fetchedToken("dev", devTokenUrl(server, userId), undefined, remembered));
  });
  // An app that hosts this page next to its backend names the URL that hands its signed-in user a
  // token: <meta name="switchboard-token-url" content="/api/chat-token">.
  const backendTokenUrl = document.querySelector<HTMLMetaElement>(
    'meta[name="switchboard-token-url"]',
  )?.content;
  const backendButton = byId("backend-sign-in");
  if (backendTokenUrl) {
    backendButton.hidden = false;
    backendButton.addEventListener("click", () => {
      const tokenUrl = new URL(backendTokenUrl, location.href).href;
      void attempt(() => fetchedToken("backend", tokenUrl, undefined, remembered));
    });
  }
  byId("token-sign-in").addEventListener("click", () => {
    void attempt(async () => pastedToken(inputValue("token")));
  });
  // A reload, or another tab, opens the remembered session without asking again.
  const session = sessionStore.load();
  if (session && !params.has("server")) {
    void attempt(
      async () =>
        session.source === "pasted" || session.tokenUrl === undefined
          ? pastedToken(session.token)
          : fetchedToken(session.source, session.tokenUrl, session.token, remembered),
      session,
    );
  } else {
    byId("sign-in").hidden = false;
  }
}

// Keeps the app's files for reloads while the server is down (browsers allow it on https and on
// localhost only; elsewhere the page simply needs the server to open).
if ("serviceWorker" in navigator && window.isSecureContext) {
  navigator.serviceWorker.register("sw.js").catch((err: unknown) => {
    console.warn("service worker not registered", err);
  });
}

wireSignIn();
