import { tmpdir } from "node:os";
import { afterEach, describe, expect, it, vi } from "vitest";
import { DiskSpace, statfsAvailableBytes } from "./disk-space.js";
import { commitFailure } from "./index.js";

const MiB = 1024 * 1024;
const watched: DiskSpace[] = [];

function watch(free: { bytes: number | Error }, reserveBytes = 100 * MiB) {
  const changes: Array<[boolean, number]> = [];
  const errors: unknown[] = [];
  const space = new DiskSpace({
    path: "/data",
    reserveBytes,
    availableBytes: () => {
      if (free.bytes instanceof Error) throw free.bytes;
      return free.bytes;
    },
    intervalMs: 60_000, // checked by hand below
    onChange: (full, available) => changes.push([full, available]),
    onError: (err) => errors.push(err),
  });
  watched.push(space);
  return { space, changes, errors };
}

afterEach(() => {
  for (const s of watched.splice(0)) s.close();
});

describe("the data dir's free space", () => {
  it("is full from the start when the process starts on a nearly full disk", () => {
    const { space, changes } = watch({ bytes: 99 * MiB });
    expect(space.full).toBe(true);
    expect(space.availableBytes).toBe(99 * MiB);
    expect(changes).toEqual([[true, 99 * MiB]]);
  });

  it("is full below the reserve and takes messages again only a tenth above it, each change reported once", () => {
    const free = { bytes: 500 * MiB };
    const { space, changes } = watch(free);
    expect(space.full).toBe(false);
    free.bytes = 100 * MiB; // at the reserve: not below it
    space.check();
    expect(space.full).toBe(false);
    free.bytes = 100 * MiB - 1;
    space.check();
    space.check();
    expect(space.full).toBe(true);
    free.bytes = 109 * MiB; // above the reserve, under the margin: still refusing (no flapping)
    space.check();
    expect(space.full).toBe(true);
    free.bytes = 110 * MiB;
    space.check();
    expect(space.full).toBe(false);
    expect(changes).toEqual([
      [true, 100 * MiB - 1],
      [false, 110 * MiB],
    ]);
  });

  it("keeps its state when the space cannot be measured, and reports that once per run of failures", () => {
    const free: { bytes: number | Error } = { bytes: 50 * MiB };
    const { space, errors } = watch(free);
    expect(space.full).toBe(true);
    free.bytes = new Error("EIO");
    space.check();
    space.check();
    expect(space.full).toBe(true);
    expect(errors).toHaveLength(1);
    free.bytes = 500 * MiB;
    space.check();
    expect(space.full).toBe(false);
    free.bytes = new Error("EIO");
    space.check();
    expect(errors).toHaveLength(2);
    expect(space.full).toBe(false);
  });

  it("is not watched with a reserve of 0", () => {
    const measure = vi.fn(() => 0);
    const space = new DiskSpace({ path: "/data", reserveBytes: 0, availableBytes: measure });
    watched.push(space);
    space.check();
    expect(measure).not.toHaveBeenCalled();
    expect(space.full).toBe(false);
    expect(space.availableBytes).toBeUndefined();
  });

  it("checks again on its own every interval", async () => {
    vi.useFakeTimers();
    try {
      const free = { bytes: 500 * MiB };
      const { space } = watch(free);
      free.bytes = 1;
      await vi.advanceTimersByTimeAsync(60_000);
      expect(space.full).toBe(true);
    } finally {
      vi.useRealTimers();
    }
  });

  it("near the reserve, measures again as messages come (at most every 10 ms); far from it, only on its timer", () => {
    let clock = 0;
    const free = { bytes: 1_000 * MiB };
    const measure = vi.fn(() => free.bytes);
    const space = new DiskSpace({
      path: "/data",
      reserveBytes: 100 * MiB,
      availableBytes: measure,
      intervalMs: 60_000,
      now: () => clock,
    });
    watched.push(space);
    clock += 1_000;
    expect(space.full).toBe(false);
    expect(measure).toHaveBeenCalledTimes(1); // far: the start's measure only

    free.bytes = 150 * MiB; // near, but not yet measured so
    space.check();
    free.bytes = 99 * MiB; // a burst of writes since
    clock += 5;
    expect(space.full).toBe(false); // measured 5 ms ago
    clock += 5;
    expect(space.full).toBe(true); // 10 ms on: measured again, without waiting for the timer
    expect(measure).toHaveBeenCalledTimes(3);
  });

  it("a commit that failed on a full disk says so; elsewhere its error is left as it is", () => {
    const io = new Error("Input/output error");
    expect(String(commitFailure(io, "/data", () => 4096))).toBe(
      "Error: Input/output error (the data dir's disk is full: 4096 bytes free)",
    );
    expect((commitFailure(io, "/data", () => 0) as Error).cause).toBe(io);
    expect(commitFailure(io, "/data", () => 500 * MiB)).toBe(io);
    expect(
      commitFailure(io, "/data", () => {
        throw new Error("EIO");
      }),
    ).toBe(io);
  });

  it("measures a real file system with statfs", () => {
    const bytes = statfsAvailableBytes(tmpdir());
    expect(Number.isSafeInteger(bytes)).toBe(true);
    expect(bytes).toBeGreaterThan(0);
  });
});
