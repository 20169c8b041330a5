/**
 * Do-not-disturb windows (docs/protocol.md, "Notification settings"): a daily span of local time in
 * the user's IANA time zone, during which push sends the user nothing. The wall clock comes from
 * Intl, so daylight-saving changes are the zone's own.
 */
import type { DoNotDisturb } from "../backends/types.js";

export const MINUTES_PER_DAY = 24 * 60;
const TIME_ZONE_CHARS_MAX = 64;
/** Formatters kept per time zone (creating one costs far more than using it). */
const FORMATTERS_MAX = 1_000;
const formatters = new Map<string, Intl.DateTimeFormat>();

function formatter(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat("en-US", { timeZone, hour: "numeric", minute: "numeric", hourCycle: "h23" });
    if (formatters.size >= FORMATTERS_MAX) formatters.clear();
    formatters.set(timeZone, f);
  }
  return f;
}

/**
 * The zone's own spelling of a name `doNotDisturbProblem` accepted: IANA names are matched without
 * regard to case and some are links (`europe/berlin` is `Europe/Berlin`, `Etc/UTC` is `UTC`), so the
 * window is stored, and shown back, as the zone calls itself.
 */
export function canonicalTimeZone(timeZone: string): string {
  return formatter(timeZone).resolvedOptions().timeZone;
}

/** Minutes after local midnight in `timeZone` at `nowMs`. */
export function minuteOfDay(nowMs: number, timeZone: string): number {
  let hour = 0;
  let minute = 0;
  for (const part of formatter(timeZone).formatToParts(nowMs)) {
    if (part.type === "hour") hour = Number(part.value);
    else if (part.type === "minute") minute = Number(part.value);
  }
  return hour * 60 + minute;
}

/** Whether `nowMs` falls in the window (start inclusive, end exclusive; past midnight when end < start). */
export function inDoNotDisturb(dnd: DoNotDisturb, nowMs: number): boolean {
  const m = minuteOfDay(nowMs, dnd.timeZone);
  return dnd.startMinute <= dnd.endMinute
    ? m >= dnd.startMinute && m < dnd.endMinute
    : m >= dnd.startMinute || m < dnd.endMinute;
}

/** What is wrong with a window a user asked for, or undefined. */
export function doNotDisturbProblem(dnd: DoNotDisturb): string | undefined {
  const minute = (n: number) => Number.isInteger(n) && n >= 0 && n < MINUTES_PER_DAY;
  if (!minute(dnd.startMinute) || !minute(dnd.endMinute))
    return `start_minute and end_minute must be whole minutes in [0, ${MINUTES_PER_DAY - 1}]`;
  if (dnd.startMinute === dnd.endMinute) return "start_minute and end_minute must differ";
  if (dnd.timeZone.length === 0 || dnd.timeZone.length > TIME_ZONE_CHARS_MAX)
    return `time_zone must be an IANA time zone name of 1-${TIME_ZONE_CHARS_MAX} characters`;
  try {
    formatter(dnd.timeZone);
  } catch {
    return `time_zone ${JSON.stringify(dnd.timeZone)} is not a time zone this server knows`;
  }
  return undefined;
}
