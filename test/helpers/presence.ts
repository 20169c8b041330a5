/** Presence in integration tests: making two users contacts, watching, and matching presence events. */
import { expect } from "vitest";
import type { ServerFrame } from "../../gen/switchboard/client/v1/client_pb.js";
import { expectCase, type RawClient } from "./raw-client.js";

/**
 * Makes `other` a contact of the watcher's user (a direct message to them: a shared conversation) and,
 * with `watch`, subscribes to their presence; returns the snapshot's statuses then.
 */
export async function becomeContact(watcher: RawClient, other: string, o: { watch?: boolean } = {}) {
  expectCase(
    await watcher.request({
      case: "send",
      value: { target: { case: "toUser", value: other }, clientMsgId: `hi-${other}`, body: "hi" },
    }),
    "ack",
  );
  if (!o.watch) return undefined;
  const snapshot = expectCase(
    await watcher.request({ case: "subscribePresence", value: { userIds: [other] } }),
    "presenceSnapshot",
  );
  expect(snapshot.statuses.map((s) => s.userId)).toEqual([other]);
  return snapshot.statuses;
}

/** Matches a presence event of `userId` with that online state. */
export const presenceOf = (userId: string, online: boolean) => (f: ServerFrame) =>
  f.kind.case === "presence" &&
  (f.kind.value as { status?: { userId: string; online: boolean } }).status?.userId === userId &&
  (f.kind.value as { status?: { online: boolean } }).status?.online === online;
