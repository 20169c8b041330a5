/** A token's check with a deadline: a key set that cannot be had in time is AUTH_UNAVAILABLE. */
import type { Identity } from "../lib/auth.js";
import { errors } from "../lib/errors.js";

/** `verify(token)`, refused as AUTH_UNAVAILABLE if it takes longer than `deadlineMs` (auth.authTimeoutMs). */
export async function verifyInTime(
  verify: (token: string) => Promise<Identity>,
  token: string,
  deadlineMs: number,
): Promise<Identity> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(errors.unavailable("AUTH_UNAVAILABLE", "the token could not be checked in time")),
      deadlineMs,
    );
  });
  try {
    return await Promise.race([verify(token), late]);
  } finally {
    clearTimeout(timer);
  }
}
