/**
 * The reference web client's entry point: the sign-in form, then the chat, on the DOM of
 * web/index.html. All protocol work is the SDK's (imported from the bundle it ships).
 */
import { wireSignIn } from "./sign-in-form.js";

// Keeps the app's files for reloads while the server is down (browsers allow it on https and on
// localhost only; elsewhere the page simply needs the server to open).
if ("serviceWorker" in navigator && window.isSecureContext) {
  navigator.serviceWorker.register("sw.js").catch((err: unknown) => {
    console.warn("service worker not registered", err);
  });
}

wireSignIn();
