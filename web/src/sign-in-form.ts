/**
 * The sign-in form: a dev token, a token from the app's backend, or a pasted one; and, without the
 * form, the session a reload or another tab remembers.
 *
 * Which server gets the user's token: the page's own one (its origin, or the server it names with
 * <meta name="switchboard-server" content="https://chat.example.com">) without asking. The server
 * field (which a link's ?server= fills in) may name any other, but a token goes there only once the
 * user confirmed it, and a token from the app's backend never does: it is the app's user's, for the
 * app's chat server only.
 */
import { byId } from "./dom.js";
import { inputValue, USER_ID } from "./form-input.js";
import { type StoredSession, sessionStore } from "./local-store.js";
import { openChat } from "./open-chat.js";
import {
  type Credentials,
  devTokenUrl,
  fetchedToken,
  normalizeServer,
  pastedToken,
  TokenNotUsable,
} from "./sign-in.js";

function showSignInError(message: string): void {
  byId("sign-in-error").textContent = message;
}

/** The server the page's markup names (<meta name="switchboard-server">), if any. */
function namedServer(): string | undefined {
  const named = document.querySelector<HTMLMetaElement>('meta[name="switchboard-server"]')?.content;
  if (!named) return undefined;
  try {
    return new URL(named, location.href).origin;
  } catch {
    return undefined;
  }
}

/** The server this page belongs to: the one its markup names, else the origin it came from. */
export function pageServer(): string {
  return namedServer() ?? location.origin;
}

/** A server the page may hand a token to without asking: its own origin, or the one it names. */
function isPageServer(server: string): boolean {
  return server === location.origin || server === pageServer();
}

/** Whether a remembered session may be opened again without the form. */
function resumable(session: StoredSession): boolean {
  if (session.source === "backend" && namedServer() !== undefined) return session.server === pageServer();
  return isPageServer(session.server) || session.confirmed === true;
}

export function wireSignIn(): void {
  const params = new URLSearchParams(location.search);
  const serverInput = byId<HTMLInputElement>("server");
  serverInput.value = params.get("server") ?? localStorage.getItem("switchboard:server") ?? pageServer();
  byId<HTMLInputElement>("user-id").value = localStorage.getItem("switchboard:user") ?? "";
  let busy = false;
  const attempt = async (
    credentials: () => Promise<Credentials>,
    server: string,
    options: { resumed?: StoredSession; confirmed?: boolean } = {},
  ) => {
    if (busy) return; // one sign-in at a time: a double click opens one chat
    busy = true;
    showSignInError("");
    try {
      let signedIn: Credentials;
      try {
        signedIn = await credentials();
      } catch (err) {
        // A remembered session whose token will never do (a pasted one expired, the token URL
        // refused the user) is not one to open again on the next load either. One whose token
        // could not be fetched now (the server down) stays: the next load tries again.
        if (options.resumed === undefined || !(err instanceof TokenNotUsable)) throw err;
        sessionStore.clear();
        throw new Error(`Your session ended (${err.message}): sign in again.`);
      }
      await openChat(signedIn, server, options.resumed, options.confirmed === true);
    } catch (err) {
      byId("sign-in").hidden = false;
      byId("app").hidden = true;
      showSignInError(err instanceof Error ? err.message : String(err));
    } finally {
      busy = false;
    }
  };
  // A renewed token is remembered in the session it belongs to, never in another server's.
  const rememberer = (source: Credentials["source"], tokenUrl: string) => (token: string) => {
    const session = sessionStore.load();
    if (session?.source === source && session.tokenUrl === tokenUrl) sessionStore.save({ ...session, token });
  };

  // Another server than the page's: the user says so before any token goes there.
  const confirmBox = byId("server-confirm");
  let confirmed: (() => void) | undefined;
  const hideConfirm = () => {
    confirmBox.hidden = true;
    confirmed = undefined;
  };
  const withServer = (go: (server: string, confirmed: boolean) => void) => {
    hideConfirm();
    let server: string;
    try {
      server = normalizeServer(serverInput.value);
    } catch {
      return showSignInError("The server is not a URL, e.g. https://chat.example.com");
    }
    if (isPageServer(server)) return go(server, false);
    byId("server-confirm-text").textContent =
      `This page is from ${location.origin}, but the server field names ${server}. Signing in sends ` +
      `your token to ${server}: do so only if you trust it.`;
    byId("server-confirm-yes").textContent = `Sign in to ${server}`;
    confirmed = () => go(server, true);
    confirmBox.hidden = false;
    byId("server-confirm-yes").focus();
  };
  byId("server-confirm-yes").addEventListener("click", () => {
    const go = confirmed;
    hideConfirm();
    go?.();
  });
  byId("server-confirm-no").addEventListener("click", () => {
    hideConfirm();
    serverInput.focus();
  });
  serverInput.addEventListener("input", hideConfirm);

  byId("sign-in-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const userId = inputValue("user-id");
    if (!USER_ID.test(userId)) return showSignInError("A user id is 1-128 of A-Z a-z 0-9 . _ @ : + -");
    withServer((server, confirmed) => {
      const tokenUrl = devTokenUrl(server, userId);
      void attempt(() => fetchedToken("dev", tokenUrl, undefined, rememberer("dev", tokenUrl)), server, {
        confirmed,
      });
    });
  });
  // An app that hosts this page next to its backend names the URL that hands its signed-in user a
  // token: <meta name="switchboard-token-url" content="/api/chat-token">. That token goes to the
  // page's server only, whatever the server field says.
  const backendTokenUrl = document.querySelector<HTMLMetaElement>(
    'meta[name="switchboard-token-url"]',
  )?.content;
  const backendButton = byId("backend-sign-in");
  if (backendTokenUrl) {
    backendButton.hidden = false;
    backendButton.addEventListener("click", () => {
      hideConfirm();
      const tokenUrl = new URL(backendTokenUrl, location.href).href;
      const signIn = (server: string, confirmed: boolean) =>
        void attempt(
          () => fetchedToken("backend", tokenUrl, undefined, rememberer("backend", tokenUrl)),
          server,
          { confirmed },
        );
      // A page that names its server sends its backend's token there, whatever the field says; one
      // that does not (hosted as before the meta existed) sends it to the field's server, asking first
      // if that is not the page's own origin.
      const named = namedServer();
      if (named !== undefined) signIn(named, false);
      else withServer(signIn);
    });
  }
  byId("token-sign-in").addEventListener("click", () => {
    const token = inputValue("token");
    withServer((server, confirmed) => void attempt(async () => pastedToken(token), server, { confirmed }));
  });
  // A reload, or another tab, opens the remembered session without asking again; a session for a
  // server the page does not name, which the user never confirmed, is not opened.
  const session = sessionStore.load();
  if (session && !resumable(session)) sessionStore.clear();
  if (session && resumable(session) && !params.has("server")) {
    void attempt(
      async () =>
        session.source === "pasted" || session.tokenUrl === undefined
          ? pastedToken(session.token)
          : fetchedToken(
              session.source,
              session.tokenUrl,
              session.token,
              rememberer(session.source, session.tokenUrl),
            ),
      session.server,
      { resumed: session, confirmed: session.confirmed === true },
    );
  } else {
    byId("sign-in").hidden = false;
  }
}
