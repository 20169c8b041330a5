/** A token's check with a deadline: a key set that cannot be had in time is AUTH_UNAVAILABLE. */
import type { Identity } from "../lib/auth.js";
import { errors } from "../lib/errors.js";
import { inTime } from "../lib/in-time.js";

/** `verify(token)`, refused as AUTH_UNAVAILABLE if it takes longer than `deadlineMs` (auth.authTimeoutMs). */
export function verifyInTime(
  verify: (token: string) => Promise<Identity>,
  token: string,
  deadlineMs: number,
): Promise<Identity> {
  return inTime(verify(token), deadlineMs, () =>
    errors.unavailable("AUTH_UNAVAILABLE", "the token could not be checked in time"),
  );
}
