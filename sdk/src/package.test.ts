/**
 * The package as an app installs it: `npm pack` builds the SDK (prepack), and every entry its
 * `exports` names is then a file in it, the Node entry loadable. (An app linking this directory once
 * found `dist/` holding the browser bundle only: nothing built the Node entry.)
 */
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";

const sdkDir = join(dirname(fileURLToPath(import.meta.url)), "..");
const manifest = JSON.parse(readFileSync(join(sdkDir, "package.json"), "utf8")) as {
  exports: Record<string, string | Record<string, string>>;
  scripts: Record<string, string>;
};

/** Every file the exports map names, relative to the package. */
const exported = Object.values(manifest.exports)
  .flatMap((e) => (typeof e === "string" ? [e] : Object.values(e)))
  .map((p) => p.replace(/^\.\//, ""));

describe("the SDK package", () => {
  it("builds on pack, and its Node entry exists and loads", async () => {
    expect(manifest.scripts.prepack).toBe("npm run build && npm run build:browser");
    // The Node build alone (what prepack runs first; the browser bundle is built by `npm test`).
    await new Promise<void>((resolve, reject) =>
      execFile("npm", ["run", "build"], { cwd: sdkDir, timeout: 120_000 }, (err, _out, stderr) =>
        err ? reject(new Error(`npm run build in sdk failed: ${stderr}`)) : resolve(),
      ),
    );
    for (const file of exported) expect(existsSync(join(sdkDir, file)), file).toBe(true);
    const entry = (manifest.exports["."] as Record<string, string>).import!;
    const sdk = (await import(pathToFileURL(join(sdkDir, entry)).href)) as Record<string, unknown>;
    expect(typeof sdk.SwitchboardClient).toBe("function");
    expect(typeof sdk.SwitchboardClientError).toBe("function");
  }, 150_000);
});
