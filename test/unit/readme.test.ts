import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { configDocs } from "../../internal/lib/config.js";
import { repoRoot } from "../helpers/server.js";

describe("README", () => {
  it("carries the configuration reference generated from the config tree", () => {
    const readme = readFileSync(`${repoRoot}/README.md`, "utf8");
    const table = /<!-- config:begin -->\n([\s\S]*?)\n<!-- config:end -->/.exec(readme)?.[1];
    expect(table, "run `npm run docs` to regenerate it").toBe(configDocs());
  });
});
