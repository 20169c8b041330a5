/**
 * Waiting for work with a deadline. The work is not stopped (a caller that can stop it does so in
 * `late`); only the wait ends, and what the work does after is not waited for (its rejection then
 * counts as handled: Promise.race listens to it).
 */

/** `work`'s outcome, or past `deadlineMs` the error `late()` returns; the timer goes either way. */
export async function inTime<T>(work: Promise<T>, deadlineMs: number, late: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(late()), deadlineMs);
  });
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}
