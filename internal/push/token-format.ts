/**
 * What a device token must look like per provider, checked at registration so an app learns of a
 * wrong token at once (INVALID_TOKEN) instead of it being pruned at the first notification.
 */

import { isIP } from "node:net";
import type { DeviceRecord } from "../backends/types.js";
import { isPublicAddress } from "./outbound-guard.js";
import { parseSubscription } from "./providers/web-push.js";

/**
 * Why a user's URL can never be notified: a loopback name or a literal non-public address (names that
 * resolve to one are refused when a notification is sent: outbound-guard.ts).
 */
function privateHostProblem(url: URL): string | undefined {
  // "localhost." is localhost: a name's trailing dot (the DNS root) changes nothing it resolves to.
  const host = url.hostname
    .replace(/^\[|\]$/g, "")
    .replace(/\.+$/, "")
    .toLowerCase();
  if (host === "localhost" || host.endsWith(".localhost") || (isIP(host) && !isPublicAddress(host)))
    return `${host} is not a public address, and notifications are never sent inside the network`;
  return undefined;
}

/**
 * Why `token` cannot be a token of `provider`; undefined when it can. `allowPrivateEndpoints`
 * (push.allowPrivateEndpoints) lets users' URLs name loopback and private addresses.
 */
export function tokenProblem(
  provider: DeviceRecord["provider"],
  token: string,
  allowPrivateEndpoints = false,
): string | undefined {
  switch (provider) {
    case "apns":
      return /^[0-9a-fA-F]{32,200}$/.test(token)
        ? undefined
        : "an APNs device token is 32 to 200 hexadecimal digits";
    case "webpush": {
      const subscription = parseSubscription(token, false);
      if (typeof subscription === "string")
        return `a Web Push token is the PushSubscription JSON: ${subscription}`;
      return allowPrivateEndpoints ? undefined : privateHostProblem(subscription.endpoint);
    }
    case "webhook": {
      const url = URL.canParse(token) ? new URL(token) : undefined;
      if (url?.protocol !== "https:" && url?.protocol !== "http:") return "a webhook token is an http(s) URL";
      return allowPrivateEndpoints ? undefined : privateHostProblem(url);
    }
    case "fcm":
      // Registration tokens are opaque: FCM itself says UNREGISTERED or INVALID_ARGUMENT (pruned then).
      return undefined;
  }
}
