/**
 * The operator never imports service internals (docs/design.md §5; ADR 0004): from outside operator/ it may
 * use the contracts (gen/), the shared library (internal/lib/) and the one provisioning entry point
 * of the backends. Everything else it learns over gRPC, Kafka or the Kubernetes API.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const root = resolve(import.meta.dirname, "..");
const ALLOWED = [
  /^gen\//,
  /^internal\/lib\//,
  /^internal\/backends\/distributed\/provision\.ts$/,
  /^operator\//,
];

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory()
      ? sources(join(dir, e.name))
      : e.name.endsWith(".ts") && !e.name.endsWith(".test.ts")
        ? [join(dir, e.name)]
        : [],
  );
}

describe("operator boundaries", () => {
  it("imports only contracts, the shared library and the provisioning entry point", () => {
    const files = sources(join(root, "operator"));
    expect(files.length).toBeGreaterThan(5);
    const violations: string[] = [];
    for (const file of files) {
      const text = readFileSync(file, "utf8");
      for (const m of text.matchAll(/from\s+"(\.{1,2}\/[^"]+)"|import\("(\.{1,2}\/[^"]+)"\)/g)) {
        const spec = (m[1] ?? m[2]) as string;
        const target = relative(root, resolve(file, "..", spec)).replace(/\.js$/, ".ts");
        if (!ALLOWED.some((re) => re.test(target))) violations.push(`${relative(root, file)} → ${target}`);
      }
    }
    expect(violations).toEqual([]);
  });
});
