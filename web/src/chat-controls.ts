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

export function wireChat(app: ChatApp, push: WebPush): void {
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
  byId("join-group").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = inputValue("join-group-id");
    if (!id) return;
    void app.joinGroup(id).then((joined) => {
      if (!joined) return;
      byId<HTMLInputElement>("join-group-id").value = "";
      byId<HTMLDetailsElement>("join-group-details").open = false;
    });
  });
  byId("group-open").addEventListener("change", (e) => {
    void app.changeGroup({ open: (e.target as HTMLInputElement).checked });
  });
  byId("group-admins-post").addEventListener("change", (e) => {
    void app.changeGroup({ postPolicy: (e.target as HTMLInputElement).checked ? "admins" : "everyone" });
  });
  byId("group-admins-add").addEventListener("change", (e) => {
    void app.changeGroup({ addPolicy: (e.target as HTMLInputElement).checked ? "admins" : "everyone" });
  });
  const groupName = byId<HTMLInputElement>("group-name");
  byId("group-rename").addEventListener("submit", (e) => {
    e.preventDefault();
    void app.renameGroup(groupName.value);
  });
  // Escape takes back a first "Make owner" press (the button asks to confirm until then).
  byId("member-list").addEventListener("keydown", (e) => {
    if (e.key !== "Escape" || app.confirmingOwner === undefined) return;
    app.confirmingOwner = undefined;
    app.onChange();
  });
  const groupId = byId<HTMLInputElement>("group-id");
  byId("copy-group-id").addEventListener("click", () => {
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
  byId("add-member").addEventListener("submit", (e) => {
    e.preventDefault();
    const user = inputValue("add-member-user");
    byId<HTMLInputElement>("add-member-user").value = "";
    if (user) void app.addMember(user);
  });
  byId("leave-group").addEventListener("click", () => void app.leave());
  byId("mute-toggle").addEventListener("click", () => void app.toggleMute());
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
    void push
      .signOut()
      .then(() => app.client.close())
      .then(() => location.reload());
  });
  // Nothing tells a user they were added to a group until its first message, nor that their role or
  // a group's settings changed: look again (the list, the open group's roster) whenever they come
  // back to the tab.
  window.addEventListener("focus", () => {
    if (app.status !== "online") return;
    void app.refreshConversations();
    void app.recheckOpenGroup(false);
  });
  setInterval(() => {
    if (
      app.status === "online" &&
      document.visibilityState === "visible" &&
      app.openRestricted &&
      app.open?.delivery === "push"
    )
      void app.recheckOpenGroup(false);
  }, ROLE_RECHECK_MS);
}
