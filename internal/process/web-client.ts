/**
 * The reference web client (web/, built into web/dist by scripts/build-web.mjs), served by every
 * gateway at / so `npm start` gives a working chat at once. The files are read once at start: the
 * build is a handful of small static files, and a fixed list means no path from a URL ever reaches
 * the file system.
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { Logger } from "../lib/log.js";

export interface WebAsset {
  contentType: string;
  body: Buffer;
}

const CONTENT_TYPES: Record<string, string> = {
  "index.html": "text/html; charset=utf-8",
  "app.js": "text/javascript; charset=utf-8",
  "switchboard-sdk.js": "text/javascript; charset=utf-8",
  "styles.css": "text/css; charset=utf-8",
  "favicon.svg": "image/svg+xml",
  "sw.js": "text/javascript; charset=utf-8",
  "app.js.map": "application/json",
  "switchboard-sdk.js.map": "application/json",
};

/**
 * The page's scripts and styles come from this origin only (no inline code), and it may talk to
 * any WebSocket endpoint: /v1/connect may name another host.
 */
export const WEB_CLIENT_CSP =
  "default-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** URL path → asset; empty when the client was not built (then / answers 404 saying so). */
export function loadWebClient(log: Logger): Map<string, WebAsset> {
  const assets = new Map<string, WebAsset>();
  const dir = new URL("../../../web/dist/", import.meta.url);
  for (const [file, contentType] of Object.entries(CONTENT_TYPES)) {
    try {
      assets.set(`/${file}`, { contentType, body: readFileSync(fileURLToPath(new URL(file, dir))) });
    } catch (err) {
      log.debug("web client file missing", { file, err });
    }
  }
  const index = assets.get("/index.html");
  if (index) assets.set("/", index);
  else log.info("web client not built (npm run build): / answers 404");
  return assets;
}
