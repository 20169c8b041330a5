/**
 * Before any browser test: Debian's chromium must be installed (test/infra/up.sh chromium installs
 * it) and the web client built (npm test builds it). Either missing is a failure that says what to
 * do, never a skip: CI must not pass without having run the browser.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { repoRoot } from "../helpers/server.js";
import { ensureServer } from "../infra/servers.js";
import { CHROMIUM_PATH } from "./harness.js";

export default async function setup(): Promise<void> {
  for (const file of ["dist/cmd/switchboard.js", "web/dist/index.html", "web/dist/switchboard-sdk.js"]) {
    if (!existsSync(join(repoRoot, file))) {
      throw new Error(`${file} is missing: run \`npm run build\` (npm test does) before the browser tests`);
    }
  }
  const env = await ensureServer("chromium", { timeoutMs: 15 * 60_000 });
  if (env.CHROMIUM !== CHROMIUM_PATH) {
    throw new Error(`test/infra/up.sh chromium gave ${env.CHROMIUM}, the tests drive ${CHROMIUM_PATH}`);
  }
}
