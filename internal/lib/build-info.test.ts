import { readFileSync } from "node:fs";
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { BUILD_VERSION, registerBuildInfo } from "./build-info.js";

describe("build info", () => {
  it("is the package's version", () => {
    const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
      version: string;
    };
    expect(BUILD_VERSION).toBe(pkg.version);
  });

  it("is exported as a gauge of 1 with the version and the Node.js version as labels", async () => {
    const registry = new Registry();
    registerBuildInfo(registry, "x_build_info", "help");
    const text = await registry.metrics();
    expect(text).toContain(
      `x_build_info{version="${BUILD_VERSION}",node_version="${process.versions.node}"} 1`,
    );
  });
});
