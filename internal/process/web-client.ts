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
 * The page's policy: scripts and styles from this origin only (no inline code), and connections to
 * this origin only ('self' takes in its ws:/wss: URLs) plus, when `http.publicUrl` names another
 * origin, that one: /v1/connect hands it out. Never any host: a link's ?server= must not be able to
 * take the page, and the token it carries, to a server of the link's choosing.
 */
export function webClientCsp(publicUrl = ""): string {
  let connect = "'self'";
  if (publicUrl !== "") {
    try {
      const { protocol, host } = new URL(publicUrl);
      if (/^(wss?|https?):$/.test(protocol)) connect += ` ${protocol}//${host}`;
    } catch {
      // not a URL: the config check reports it; the page keeps to its own origin
    }
  }
  return `default-src 'self'; img-src 'self' data:; connect-src ${connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`;
}

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
