/**
 * The id worker's restart scenario both backends' high-water stores must pass: a worker issues ids
 * for a second, "restarts" (its store reopened, by another process or the same one) with its clock
 * 3 s behind, and must issue none of them again, nor any id below them.
 */
import { expect } from "vitest";
import { createIdService, type HighWaterStore } from "../../internal/id/index.js";

export async function expectNoIdReissuedAfterRestart(
  workerId: number,
  before: HighWaterStore,
  reopen: () => Promise<HighWaterStore>,
  start = Date.now(),
): Promise<void> {
  let clock = start;
  const call = {
    $typeName: "switchboard.id.v1.AllocateIdsRequest",
    count: 1_000,
    received: [] as string[],
  } as const;
  const ctx = { signal: new AbortController().signal, peer: "test" };
  const first = createIdService(workerId, () => clock, before);
  const issued = new Set<string>();
  for (let i = 0; i < 10; i++) {
    for (const id of (await first.allocateIds(call, ctx)).ids ?? []) issued.add(id);
    clock += 100;
  }
  let largest = 0n;
  for (const id of issued) if (BigInt(id) > largest) largest = BigInt(id);
  clock -= 3_000; // the clock stepped back across the restart
  const after = await reopen();
  expect(after.load()).toBeGreaterThan(start + 900);
  const second = createIdService(workerId, () => clock, after);
  for (let i = 0; i < 10; i++) {
    for (const id of (await second.allocateIds(call, ctx)).ids ?? []) {
      expect(issued.has(id)).toBe(false);
      expect(BigInt(id) > largest).toBe(true);
    }
    clock += 100;
  }
}
