/** HDR histogram helpers: values are recorded in microseconds and reported in milliseconds. */
import * as hdr from "hdr-histogram-js";

export type Histogram = hdr.Histogram;

export function newHistogram(): Histogram {
  return hdr.build({
    bitBucketSize: 32,
    autoResize: true,
    lowestDiscernibleValue: 1,
    highestTrackableValue: 3_600_000_000, // 1 h in µs; autoResize covers anything beyond
    numberOfSignificantValueDigits: 3,
    useWebAssembly: false,
  });
}

/** Records a duration given in (fractional) milliseconds. */
export function recordMs(h: Histogram, ms: number): void {
  h.recordValue(ms <= 0 ? 0 : Math.round(ms * 1000));
}

export interface LatencySummary {
  count: number;
  mean_ms: number;
  p50_ms: number;
  p90_ms: number;
  p99_ms: number;
  p999_ms: number;
  max_ms: number;
}

const r3 = (us: number) => Math.round(us) / 1000;

export function summarize(h: Histogram): LatencySummary {
  if (h.totalCount === 0)
    return {
      count: 0,
      mean_ms: Number.NaN,
      p50_ms: Number.NaN,
      p90_ms: Number.NaN,
      p99_ms: Number.NaN,
      p999_ms: Number.NaN,
      max_ms: Number.NaN,
    };
  return {
    count: h.totalCount,
    mean_ms: r3(h.mean),
    p50_ms: r3(h.getValueAtPercentile(50)),
    p90_ms: r3(h.getValueAtPercentile(90)),
    p99_ms: r3(h.getValueAtPercentile(99)),
    p999_ms: r3(h.getValueAtPercentile(99.9)),
    max_ms: r3(h.maxValue),
  };
}

/** The p-th percentile (nearest rank) of ascending `sorted`; NaN when it is empty. */
export function nearestRank(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}
