// Rewrites the configuration and metrics references in README.md from the typed config tree and the
// metrics registries (run after a build).
import { readFileSync, writeFileSync } from "node:fs";
import { configDocs } from "../dist/internal/lib/config.js";
import { createMetrics, metricsDocs } from "../dist/internal/lib/metrics.js";
import { createOperatorRuntimeMetrics } from "../dist/operator/runtime/metrics.js";

const path = new URL("../README.md", import.meta.url);
const section = (text, name, body) =>
  text.replace(
    new RegExp(`<!-- ${name}:begin -->[\\s\\S]*?<!-- ${name}:end -->`),
    () => `<!-- ${name}:begin -->\n${body}\n<!-- ${name}:end -->`,
  );
let readme = readFileSync(path, "utf8");
readme = section(readme, "config", configDocs());
readme = section(
  readme,
  "metrics",
  metricsDocs([createMetrics().registry, createOperatorRuntimeMetrics().registry]),
);
writeFileSync(path, readme);
