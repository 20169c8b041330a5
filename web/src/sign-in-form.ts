/**
 * The sign-in form: a dev token, a token from the app's backend, or a pasted one; and, without the
 * form, the session a reload or another tab remembers.
 */
import { byId } from "./dom.js";
import { inputValue, USER_ID } from "./form-input.js";
import { type StoredSession, sessionStore } from "./local-store.js";
import { openChat } from "./open-chat.js";
import { type Credentials, devTokenUrl, fetchedToken, normalizeServer, pastedToken } from "./sign-in.js";

function showSignInError(message: string): void {
  byId("sign-in-error").textContent = message;
}

export function wireSignIn(): void {
  const params = new URLSearchParams(location.search);
  const serverInput = byId<HTMLInputElement>("server");
  serverInput.value = params.get("server") ?? localStorage.getItem("switchboard:server") ?? location.origin;
  byId<HTMLInputElement>("user-id").value = localStorage.getItem("switchboard:user") ?? "";
  const attempt = async (credentials: () => Promise<Credentials>, resumed?: StoredSession) => {
    showSignInError("");
    try {
      const server = resumed?.server ?? normalizeServer(serverInput.value);
      await openChat(await credentials(), server, resumed);
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
