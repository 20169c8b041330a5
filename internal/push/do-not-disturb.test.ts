import { describe, expect, it } from "vitest";
import { canonicalTimeZone, doNotDisturbProblem, inDoNotDisturb, minuteOfDay } from "./do-not-disturb.js";

const at = (iso: string) => Date.parse(iso);

describe("do-not-disturb windows", () => {
  it("reads the local wall clock of the zone, daylight saving included", () => {
    expect(minuteOfDay(at("2026-12-02T21:30:00Z"), "UTC")).toBe(21 * 60 + 30);
    expect(minuteOfDay(at("2026-12-02T21:30:00Z"), "Europe/Berlin")).toBe(22 * 60 + 30); // CET
    expect(minuteOfDay(at("2026-07-02T21:30:00Z"), "Europe/Berlin")).toBe(23 * 60 + 30); // CEST
    expect(minuteOfDay(at("2026-12-02T23:59:00Z"), "Asia/Kolkata")).toBe(5 * 60 + 29);
    expect(minuteOfDay(at("2026-12-03T00:00:00Z"), "UTC")).toBe(0);
  });

  it("covers start inclusive to end exclusive, running past midnight when the end comes first", () => {
    const night = { startMinute: 22 * 60, endMinute: 7 * 60, timeZone: "Europe/Berlin" };
    expect(inDoNotDisturb(night, at("2026-12-02T20:59:00Z"))).toBe(false); // 21:59 in Berlin
    expect(inDoNotDisturb(night, at("2026-12-02T21:00:00Z"))).toBe(true); // 22:00
    expect(inDoNotDisturb(night, at("2026-12-03T02:00:00Z"))).toBe(true); // 03:00
    expect(inDoNotDisturb(night, at("2026-12-03T05:59:00Z"))).toBe(true); // 06:59
    expect(inDoNotDisturb(night, at("2026-12-03T06:00:00Z"))).toBe(false); // 07:00
    const lunch = { startMinute: 12 * 60, endMinute: 13 * 60, timeZone: "UTC" };
    expect(inDoNotDisturb(lunch, at("2026-12-02T12:30:00Z"))).toBe(true);
    expect(inDoNotDisturb(lunch, at("2026-12-02T13:00:00Z"))).toBe(false);
    expect(inDoNotDisturb(lunch, at("2026-12-02T11:59:59Z"))).toBe(false);
  });

  it("refuses windows that are empty, out of the day or in an unknown zone", () => {
    expect(
      doNotDisturbProblem({ startMinute: 0, endMinute: 1439, timeZone: "America/New_York" }),
    ).toBeUndefined();
    expect(doNotDisturbProblem({ startMinute: 60, endMinute: 60, timeZone: "UTC" })).toMatch(/differ/);
    expect(doNotDisturbProblem({ startMinute: 0, endMinute: 1440, timeZone: "UTC" })).toMatch(
      /whole minutes/,
    );
    expect(doNotDisturbProblem({ startMinute: 1.5, endMinute: 30, timeZone: "UTC" })).toMatch(
      /whole minutes/,
    );
    expect(doNotDisturbProblem({ startMinute: 0, endMinute: 30, timeZone: "Mars/Olympus" })).toMatch(
      /not a time zone/,
    );
    expect(doNotDisturbProblem({ startMinute: 0, endMinute: 30, timeZone: "" })).toMatch(/IANA/);
  });

  it("spells an accepted zone as the zone does: any case, links resolved", () => {
    expect(doNotDisturbProblem({ startMinute: 0, endMinute: 30, timeZone: "europe/berlin" })).toBeUndefined();
    expect(canonicalTimeZone("europe/berlin")).toBe("Europe/Berlin");
    expect(canonicalTimeZone("AMERICA/NEW_YORK")).toBe("America/New_York");
    expect(canonicalTimeZone("Etc/UTC")).toBe("UTC");
    expect(canonicalTimeZone("Europe/Berlin")).toBe("Europe/Berlin");
  });
});
