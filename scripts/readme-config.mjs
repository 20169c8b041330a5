// Rewrites the configuration reference in README.md from the typed config tree (run after a build).
import { readFileSync, writeFileSync } from "node:fs";
import { configDocs } from "../dist/internal/lib/config.js";

const path = new URL("../README.md", import.meta.url);
const readme = readFileSync(path, "utf8");
const next = readme.replace(
  /<!-- config:begin -->\n[\s\S]*?\n<!-- config:end -->/,
  () => `<!-- config:begin -->\n${configDocs()}\n<!-- config:end -->`,
);
writeFileSync(path, next);
