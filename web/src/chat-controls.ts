/**
 * The chat's controls: what the user's clicks, keys and form submissions ask of the ChatApp.
 */
import type { ChatApp } from "./chat-app.js";
import { byId } from "./dom.js";
import { inputValue, USER_ID } from "./form-input.js";
import { sessionStore } from "./local-store.js";
import type { WebPush } from "./web-push.js";

/**
 * How often a plain member of an admins-only group, with it open in a visible tab, asks whether
 * they have been made an admin (the server sends no event for it): the one case in which the page
 * would otherwise keep a disabled composer it should enable. Not for a pull-model group, whose roster
 * is the whole (large) channel: there the page looks again when the user comes back to the tab.
 */
const ROLE_RECHECK_MS = 10_000;

/**
 * Wires the chat's controls to `app`, until `signal` aborts: a sign-in that failed after wiring must
 * leave nothing behind for the next one (its handlers would run first, e.g. empty the composer).
 */
export function wireChat(app: ChatApp, push: WebPush, signal: AbortSignal): void {
  const on = <K extends keyof HTMLElementEventMap>(
    target: HTMLElement | Window,
    type: K,
    listener: (e: HTMLElementEventMap[K]) => void,
  ): void => (target as EventTarget).addEventListener(type, listener as EventListener, { signal });
  const composer = byId<HTMLInputElement>("composer-input");
  on(byId("composer"), "submit", (e) => {
    e.preventDefault();
    app.send(composer.value);
    composer.value = "";
  });
  on(composer, "input", () => app.composing(composer.value));
  on(byId("new-chat"), "submit", (e) => {
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
  on(byId("new-group"), "submit", (e) => {
    e.preventDefault();
    const members = inputValue("new-group-members")
      .split(/[\s,]+/)
      .filter(Boolean);
    void app.createGroup(inputValue("new-group-name"), members).then(() => {
      byId<HTMLInputElement>("new-group-name").value = "";
      byId<HTMLInputElement>("new-group-members").value = "";
    });
  });
  on(byId("join-group"), "submit", (e) => {
    e.preventDefault();
    const id = inputValue("join-group-id");
    if (!id) return;
    void app.joinGroup(id).then((joined) => {
      if (!joined) return;
      byId<HTMLInputElement>("join-group-id").value = "";
      byId<HTMLDetailsElement>("join-group-details").open = false;
    });
  });
  on(byId("group-open"), "change", (e) => {
    void app.changeGroup({ open: (e.target as HTMLInputElement).checked });
  });
  on(byId("group-admins-post"), "change", (e) => {
    void app.changeGroup({ postPolicy: (e.target as HTMLInputElement).checked ? "admins" : "everyone" });
  });
  on(byId("group-admins-add"), "change", (e) => {
    void app.changeGroup({ addPolicy: (e.target as HTMLInputElement).checked ? "admins" : "everyone" });
  });
  const groupName = byId<HTMLInputElement>("group-name");
  on(byId("group-rename"), "submit", (e) => {
    e.preventDefault();
    void app.renameGroup(groupName.value);
  });
  // Escape takes back a first "Make owner" press (the button asks to confirm until then).
  on(byId("member-list"), "keydown", (e) => {
    if (e.key !== "Escape" || app.confirmingOwner === undefined) return;
    app.confirmingOwner = undefined;
    app.onChange();
  });
  const groupId = byId<HTMLInputElement>("group-id");
  on(byId("copy-group-id"), "click", () => {
    const status = byId("copy-status");
    // The clipboard is there only in secure contexts (https, localhost) and may be refused: then the
    // id is left selected for the user to copy.
    const copy = navigator.clipboard?.writeText(groupId.value) ?? Promise.reject(new Error("no clipboard"));
    copy.then(
      () => {
        status.textContent = "Copied";
      },
      () => {
        groupId.select();
        status.textContent = "Selected: copy it with your keyboard or menu";
      },
    );
  });
  on(byId("add-member"), "submit", (e) => {
    e.preventDefault();
    const user = inputValue("add-member-user");
    byId<HTMLInputElement>("add-member-user").value = "";
    if (user) void app.addMember(user);
  });
  on(byId("leave-group"), "click", () => void app.leave());
  on(byId("mute-toggle"), "click", () => void app.toggleMute());
  on(byId("back"), "click", () => app.select(undefined));
  const membersToggle = byId("members-toggle");
  on(membersToggle, "click", () => {
    const panel = byId("members");
    panel.hidden = !panel.hidden;
    membersToggle.setAttribute("aria-expanded", String(!panel.hidden));
    const open = app.open;
    if (!panel.hidden && open) void app.loadMembers(open);
  });
  on(byId("load-older"), "click", () => void app.loadOlder());
  on(byId("more-members"), "click", () => {
    const open = app.open;
    if (open) void app.loadMoreMembers(open);
  });
  const scroller = byId("messages");
  on(scroller, "scroll", () => {
    if (scroller.scrollTop < 40) void app.loadOlder();
  });
  on(byId("sign-out"), "click", () => {
    // Messages not sent yet are discarded with the session (their bodies do not stay on a device
    // the user signed out of): only if the user says so.
    const unsent = app.unsentCount();
    if (
      unsent > 0 &&
      !confirm(
        `${unsent === 1 ? "1 message is" : `${unsent} messages are`} not sent yet: signing out stops sending them, and those not out by then are lost. Sign out anyway?`,
      )
    )
      return;
    app.discardOutbox();
    sessionStore.clear();
    // Web Push is turned off through the server first (it needs the connection), then the client
    // closes; the page reloads into the sign-in form whatever failed on the way.
    push
      .signOut()
      .catch(() => undefined)
      .then(() => app.client.close())
      .catch(() => undefined)
      .finally(() => location.reload());
  });
  // Nothing tells a user they were added to a group until its first message, nor that their role or
  // a group's settings changed: look again (the list, the open group's roster) whenever they come
  // back to the tab.
  on(window, "focus", () => {
    if (app.status !== "online") return;
    void app.refreshConversations();
    void app.recheckOpenGroup(false);
  });
  const recheck = setInterval(() => {
    if (
      app.status === "online" &&
      document.visibilityState === "visible" &&
      app.openRestricted &&
      app.open?.delivery === "push"
    )
      void app.recheckOpenGroup(false);
  }, ROLE_RECHECK_MS);
  signal.addEventListener("abort", () => clearInterval(recheck));
}
