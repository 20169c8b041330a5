/** bench:ab's bookkeeping: which side runs first, and how the runs' ladders are compared. */
import { describe, expect, it } from "vitest";
import { compare, comparisonTable, ladderOf, type Run, roundOrder, type Step } from "./ab.js";

const step = (rate: number, p50: number, p99: number, server: number, system?: number): Step => ({
  rate,
  latency: { p50_ms: p50, p99_ms: p99 },
  server_cpu_us_per_msg: server,
  ...(system === undefined ? {} : { system_cpu_us_per_msg: system }),
});

describe("bench:ab", () => {
  it("alternates which side runs first, so a drift falls on both alike", () => {
    expect([0, 1, 2, 3].map(roundOrder)).toEqual([
      ["base", "head"],
      ["head", "base"],
      ["base", "head"],
      ["head", "base"],
    ]);
  });

  it("reads the ladder of a JSON summary, and none from a summary without one", () => {
    expect(ladderOf({ ladder: [step(500, 1, 2, 3)] })).toEqual([step(500, 1, 2, 3)]);
    expect(ladderOf({ bench: "switchboard-embedded" })).toEqual([]);
  });

  it("keeps every run's value per side and rate and compares the medians", () => {
    const runs: Run[] = [
      { side: "base", ladder: [step(500, 2, 10, 500), step(2000, 4, 20, 300)] },
      { side: "head", ladder: [step(500, 1.5, 8, 400), step(2000, 4, 30, 330)] },
      { side: "head", ladder: [step(500, 1.7, 9, 420)] },
      { side: "base", ladder: [step(500, 2.2, 12, 520), step(2000, 5, 20, 310)] },
      { side: "base", ladder: [step(500, 2.4, 11, 540)] },
    ];
    const rows = compare(runs);
    const row = (rate: number, figure: string) => rows.find((r) => r.rate === rate && r.figure === figure)!;
    expect(row(500, "server")).toMatchObject({ base: [500, 520, 540], head: [400, 420] });
    // medians 520 and 410
    expect(row(500, "server").changePercent).toBeCloseTo(((410 - 520) / 520) * 100, 6);
    expect(row(2000, "p99")).toMatchObject({ base: [20, 20], head: [30] });
    expect(row(2000, "p99").changePercent).toBeCloseTo(50, 6);
    // no run reported the whole system's CPU (embedded): no such row
    expect(rows.some((r) => r.figure === "all processes")).toBe(false);
    expect(rows.map((r) => r.rate)).toEqual([500, 500, 500, 2000, 2000, 2000]);
  });

  it("reports no change for a rate only one side reached", () => {
    const rows = compare([
      { side: "base", ladder: [step(5000, 6, 40, 160, 900)] },
      { side: "head", ladder: [] },
    ]);
    expect(rows.find((r) => r.figure === "all processes")).toMatchObject({ base: [900], head: [] });
    expect(rows.every((r) => r.changePercent === undefined)).toBe(true);
  });

  it("prints each side's range with its median and the signed change", () => {
    const text = comparisonTable(
      compare([
        { side: "base", ladder: [step(1000, 40, 120, 600, 1500)] },
        { side: "head", ladder: [step(1000, 36, 100, 570, 1400)] },
        { side: "head", ladder: [step(1000, 38, 110, 590, 1440)] },
      ]),
      "abc1234",
      "def5678",
    );
    const lines = text.split("\n");
    expect(lines[0]).toMatch(/^rate\/s\s+figure\s+base abc1234\s+head def5678\s+change$/);
    expect(text).toMatch(/1000\s+p99 ms\s+120 \(120\)\s+100–110 \(105\)\s+-12\.5 %/);
    expect(text).toMatch(/1000\s+all processes µs\/msg\s+1500 \(1500\)\s+1400–1440 \(1420\)\s+-5\.3 %/);
  });
});
