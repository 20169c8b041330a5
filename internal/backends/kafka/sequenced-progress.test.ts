import type { Admin } from "kafkajs";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../lib/log.js";
import { SequencedProgress } from "./sequenced-progress.js";

/** An admin over one drafts partition whose end and committed offset the test moves. */
function fakeAdmin(state: { low: number; high: number; committed: number; stallMs?: number }) {
  const calls = { ends: 0, offsets: 0 };
  const stall = () => new Promise((r) => setTimeout(r, state.stallMs ?? 0));
  const admin = {
    fetchTopicOffsets: async () => {
      calls.ends++;
      await stall();
      return [{ partition: 0, offset: String(state.high), high: String(state.high), low: String(state.low) }];
    },
    fetchOffsets: async () => {
      calls.offsets++;
      await stall();
      return [{ topic: "drafts", partitions: [{ partition: 0, offset: String(state.committed) }] }];
    },
  } as unknown as Admin;
  return { admin, calls };
}

const progressOver = (admin: Admin) =>
  new SequencedProgress({
    admin,
    draftsTopic: "drafts",
    groupId: "sequencer",
    pollMs: 10,
    log: createLogger({ test: "sequenced-progress" }),
  });

describe("SequencedProgress", () => {
  it("is caught up once the group's committed offset reaches the partition's end read after the call", async () => {
    const state = { low: 0, high: 5, committed: 3 };
    const { admin } = fakeAdmin(state);
    const progress = progressOver(admin);
    let answer: boolean | undefined;
    const waiting = progress.caughtUp("g:1", 5_000).then((a) => (answer = a));
    await new Promise((r) => setTimeout(r, 50));
    expect(answer).toBeUndefined();
    // Drafts written after the call's end was read are not waited for.
    state.high = 9;
    state.committed = 5;
    expect(await waiting).toBe(true);
    await progress.close();
  });

  it("counts an empty partition as caught up, whatever the group committed", async () => {
    const { admin, calls } = fakeAdmin({ low: 7, high: 7, committed: -1 });
    const progress = progressOver(admin);
    expect(await progress.caughtUp("g:1", 5_000)).toBe(true);
    expect(calls.offsets).toBe(0);
    await progress.close();
  });

  it("answers false at its deadline while the broker does not answer, and while nothing is taken", async () => {
    const stalled = progressOver(fakeAdmin({ low: 0, high: 5, committed: -1, stallMs: 2_000 }).admin);
    const started = Date.now();
    expect(await stalled.caughtUp("g:1", 200)).toBe(false);
    expect(Date.now() - started).toBeLessThan(1_500);
    await stalled.close();
    const behind = progressOver(fakeAdmin({ low: 0, high: 5, committed: 4 }).admin);
    expect(await behind.caughtUp("g:1", 200)).toBe(false);
    await behind.close();
  });

  it("polls for a waiter that comes as the last poll ends, and settles every waiter at close", async () => {
    const state = { low: 0, high: 5, committed: 5 };
    const { admin } = fakeAdmin(state);
    const progress = progressOver(admin);
    // The second call comes in the first one's settlement, while the first poll is ending.
    const second = progress.caughtUp("g:1", 5_000).then(() => {
      state.high = 6;
      return progress.caughtUp("g:1", 5_000);
    });
    await new Promise((r) => setTimeout(r, 50));
    state.committed = 6;
    expect(await second).toBe(true);
    state.high = 7;
    const pending = progress.caughtUp("g:1", 60_000);
    await progress.close();
    expect(await pending).toBe(false);
    expect(await progress.caughtUp("g:1", 60_000)).toBe(false);
  });
});
