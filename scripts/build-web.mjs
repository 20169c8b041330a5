// Builds what browsers load, with esbuild (one small, dependency-free bundler; tsc alone cannot
// resolve the SDK's bare import of @bufbuild/protobuf for a browser):
//   sdk/dist/browser/switchboard-sdk.js  the SDK as one minified ESM file (the SDK ships it)
//   web/dist/                            the reference web client as static files for any host:
//                                        index.html, styles.css, favicon.svg, app.js, the SDK
//                                        and sw.js (the service worker that keeps them offline)
// app.js imports the SDK from ./switchboard-sdk.js instead of bundling a copy, so the page runs the
// very file the SDK ships. Prints the sizes (raw and gzipped) as one JSON line.
import { copyFileSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const sdkBundle = join(root, "sdk/dist/browser/switchboard-sdk.js");
const webDist = join(root, "web/dist");
const common = {
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: true,
  sourcemap: true,
  logLevel: "warning",
};

await build({ ...common, entryPoints: [join(root, "sdk/src/index.ts")], outfile: sdkBundle });

/** Every import of the SDK's entry point becomes an import of the shipped bundle next to app.js. */
const sdkAsSiblingModule = {
  name: "sdk-as-sibling-module",
  setup(b) {
    b.onResolve({ filter: /sdk\/src\/index\.js$/ }, () => ({ path: "./switchboard-sdk.js", external: true }));
  },
};
rmSync(webDist, { recursive: true, force: true });
await build({
  ...common,
  entryPoints: [join(root, "web/src/main.ts")],
  outfile: join(webDist, "app.js"),
  plugins: [sdkAsSiblingModule],
});
// The service worker is a classic script (no module workers needed): an IIFE without imports.
await build({
  ...common,
  format: "iife",
  entryPoints: [join(root, "web/src/service-worker.ts")],
  outfile: join(webDist, "sw.js"),
});
mkdirSync(webDist, { recursive: true });
for (const file of ["index.html", "styles.css", "favicon.svg"])
  copyFileSync(join(root, "web", file), join(webDist, file));
copyFileSync(sdkBundle, join(webDist, "switchboard-sdk.js"));

const size = (path) => {
  const bytes = readFileSync(path);
  return { bytes: bytes.length, gzipBytes: gzipSync(bytes, { level: 9 }).length };
};
console.log(JSON.stringify({ sdk: size(sdkBundle), app: size(join(webDist, "app.js")) }));
