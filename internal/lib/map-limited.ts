import { setImmediate as nextTurn } from "node:timers/promises";

/**
 * How long a map may run without giving the event loop back. Over a store that answers from memory
 * (the embedded one) every `fn` resolves at once, and without this a listing of 1,000 conversations ran
 * as one turn of ~100 ms of reads, holding every other client's messages that long.
 */
const TURN_SLICE_MS = 4;

/**
 * `fn` over `items`, at most `limit` at once, results in the items' order; every TURN_SLICE_MS of work
 * that waited for nothing, the calls pause for one turn of the event loop. Once `signal` aborts, no
 * further call begins and the whole rejects with its reason.
 */
export async function mapLimited<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
  signal?: AbortSignal,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let sliceStartedMs = performance.now();
  const worker = async () => {
    while (next < items.length) {
      if (performance.now() - sliceStartedMs > TURN_SLICE_MS) {
        await nextTurn();
        sliceStartedMs = performance.now();
        continue; // the others may have taken the rest meanwhile
      }
      signal?.throwIfAborted();
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
