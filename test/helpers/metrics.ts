/**
 * Reading Prometheus text exposition in tests: one parser, so every test reads a series the same way
 * (name{labels} exactly as prom-client prints them).
 */

/** A process's /metrics page. */
export async function scrape(httpUrl: string): Promise<string> {
  const res = await fetch(`${httpUrl}/metrics`);
  if (!res.ok) throw new Error(`GET ${httpUrl}/metrics: HTTP ${res.status}`);
  return res.text();
}

/** The samples of `text`: series (name and labels) and value, comments left out. */
export function samples(text: string): Array<{ series: string; name: string; value: number }> {
  const out: Array<{ series: string; name: string; value: number }> = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const space = line.lastIndexOf(" ");
    const series = line.slice(0, space);
    const brace = series.indexOf("{");
    out.push({
      series,
      name: brace < 0 ? series : series.slice(0, brace),
      value: Number(line.slice(space + 1)),
    });
  }
  return out;
}

/** The value of the sample whose series is exactly `series` (e.g. `x_total{code="OK"}`), if any. */
export function sampleOf(text: string, series: string): number | undefined {
  return samples(text).find((s) => s.series === series)?.value;
}

/** The first sample of metric `name` whose labels include `labels` (e.g. `result="sent"`), if any. */
export function firstSampleOf(text: string, name: string, labels = ""): number | undefined {
  return samples(text).find((s) => s.name === name && s.series.includes(labels))?.value;
}

/** The sum of every sample of metric `name`, whatever its labels (0 when it has none). */
export function sumOf(text: string, name: string): number {
  let total = 0;
  for (const s of samples(text)) if (s.name === name) total += s.value;
  return total;
}
