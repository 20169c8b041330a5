import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { configDocs } from "../../internal/lib/config.js";
import { createMetrics, metricsDocs } from "../../internal/lib/metrics.js";
import { createOperatorRuntimeMetrics } from "../../operator/runtime/metrics.js";
import { repoRoot } from "../helpers/server.js";

describe("README", () => {
  it("carries the configuration reference generated from the config tree", () => {
    const readme = readFileSync(`${repoRoot}/README.md`, "utf8");
    const table = /<!-- config:begin -->\n([\s\S]*?)\n<!-- config:end -->/.exec(readme)?.[1];
    expect(table, "run `npm run docs` to regenerate it").toBe(configDocs());
  });

  it("lists every HTTP path the server answers, and no other", () => {
    const readme = readFileSync(`${repoRoot}/README.md`, "utf8");
    const section = readme.slice(readme.indexOf("## HTTP endpoints"));
    const table = section.slice(0, section.indexOf("\n\n", section.indexOf("| path |")));
    const documented = [...table.matchAll(/^\| `(\/[^`?]*)[^`]*` \|/gm)].map((m) => m[1]).sort();
    // What internal/process/http.ts routes: its `case "/…":` labels, and the WebSocket upgrade's path.
    const http = readFileSync(`${repoRoot}/internal/process/http.ts`, "utf8");
    const served = new Set([...http.matchAll(/case "(\/[^"]*)":/g)].map((m) => m[1]));
    expect(http).toContain('path !== "/ws"');
    expect(documented).toEqual([...served.add("/ws")].sort());
  });

  it("lists every metric of the platform and the operator", () => {
    const readme = readFileSync(`${repoRoot}/README.md`, "utf8");
    const table = /<!-- metrics:begin -->\n([\s\S]*?)\n<!-- metrics:end -->/.exec(readme)?.[1];
    expect(table, "run `npm run docs` to regenerate it").toBe(
      metricsDocs([createMetrics().registry, createOperatorRuntimeMetrics().registry]),
    );
    expect(table).toContain("`switchboard_message_delivery_seconds` | histogram");
  });
});
