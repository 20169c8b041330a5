import { describe, expect, it } from "vitest";
import {
  conversationInFragment,
  conversationLink,
  conversationToOpen,
  notificationOf,
  openConversationMessage,
} from "./push-notification.js";

describe("push notifications", () => {
  it("show the server's payload as sent, tagged with the conversation", () => {
    const shown = notificationOf({
      title: "bob",
      body: "are you there?",
      conversation_id: "dm:alice~bob",
      notification_id: "n-1",
      message_count: 1,
      unread_count: 2,
    });
    expect(shown).toEqual({
      title: "bob",
      options: {
        body: "are you there?",
        tag: "dm:alice~bob",
        data: { conversationId: "dm:alice~bob", notificationId: "n-1" },
      },
    });
  });

  it("still show something for a payload that is not the server's", () => {
    for (const payload of [undefined, null, "text", { title: 3 }]) {
      const shown = notificationOf(payload);
      expect(shown.title).toBe("Switchboard");
      expect(shown.options.body).toBe("New message");
      expect(shown.options).not.toHaveProperty("tag");
    }
    expect(notificationOf({ body: "plain text" }).options.body).toBe("plain text");
  });

  it("open the clicked conversation by message or by link", () => {
    expect(conversationToOpen(openConversationMessage("g:42"))).toBe("g:42");
    for (const other of [undefined, "open-conversation", { type: "other", conversationId: "g:1" }])
      expect(conversationToOpen(other)).toBeUndefined();
    const link = conversationLink("https://chat.example.com/app/", "dm:a+b~c d");
    expect(link).toBe("https://chat.example.com/app/#conversation=dm%3Aa%2Bb~c%20d");
    expect(conversationInFragment(new URL(link).hash)).toBe("dm:a+b~c d");
    expect(conversationInFragment("")).toBeUndefined();
    expect(conversationInFragment("#other=1")).toBeUndefined();
  });
});
