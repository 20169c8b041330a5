/**
 * Notifications on the page: the header's toggle (and what went wrong with it), and opening the
 * conversation of a notification the user clicked, whether the service worker asks an open page
 * (a message) or opened a new one (a link with the conversation in its fragment).
 */
import type { ChatApp } from "./chat-app.js";
import { byId } from "./dom.js";
import { conversationInFragment, conversationToOpen } from "./push-notification.js";
import type { WebPush } from "./web-push.js";

export function wireNotifications(app: ChatApp, push: WebPush, signal: AbortSignal): void {
  const toggle = byId<HTMLButtonElement>("push-toggle");
  toggle.addEventListener(
    "click",
    () => {
      if (push.status !== "working") void push.toggle();
    },
    { signal },
  );
  push.onChange = () => renderToggle(push);
  renderToggle(push);
  window.addEventListener(
    "storage",
    (event) => {
      if (event.key === push.enabledKey) push.changedElsewhere();
    },
    { signal },
  );

  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.addEventListener(
      "message",
      (event) => {
        const id = conversationToOpen(event.data);
        if (id !== undefined) app.openById(id);
      },
      { signal },
    );
  }
  const linked = conversationInFragment(location.hash);
  if (linked !== undefined) {
    app.openById(linked);
    // Done with: a reload must not open it again over whatever the user opened since.
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function renderToggle(push: WebPush): void {
  const toggle = byId<HTMLButtonElement>("push-toggle");
  toggle.hidden = push.status === "unavailable";
  const on = push.status === "on";
  toggle.textContent = push.status === "working" ? "Notifications: …" : `Notifications: ${on ? "on" : "off"}`;
  toggle.setAttribute("aria-pressed", String(on));
  // aria-disabled, not disabled: a disabled button drops the keyboard focus of whoever pressed it.
  toggle.setAttribute("aria-disabled", String(push.status === "working"));
  byId("push-error").textContent = push.error;
}
