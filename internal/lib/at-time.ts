/**
 * A timer for a wall-clock time however far away. `setTimeout` takes at most 2^31 − 1 ms (about
 * 24.8 days): capped there, a token valid for a month would expire its connection days early.
 */
export const TIMER_MS_MAX = 2 ** 31 - 1;

export interface TimerHandle {
  clear(): void;
}

/** Calls `fn` once, at `atMs` (epoch ms) or as soon after as the event loop allows; never before. */
export function atTime(atMs: number, fn: () => void): TimerHandle {
  let timer: NodeJS.Timeout | undefined;
  const arm = (): void => {
    const ms = atMs - Date.now();
    if (ms <= 0) fn();
    else timer = setTimeout(arm, Math.min(ms, TIMER_MS_MAX));
  };
  // Asynchronously even for a time already past, like setTimeout.
  timer = setTimeout(arm, Math.min(Math.max(0, atMs - Date.now()), TIMER_MS_MAX));
  return { clear: () => clearTimeout(timer) };
}
