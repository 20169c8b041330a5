/**
 * What a device token must look like per provider, checked at registration so an app learns of a
 * wrong token at once (INVALID_TOKEN) instead of it being pruned at the first notification.
 */
import type { DeviceRecord } from "../backends/types.js";
import { parseSubscription } from "./providers/web-push.js";

/** Why `token` cannot be a token of `provider`; undefined when it can. */
export function tokenProblem(provider: DeviceRecord["provider"], token: string): string | undefined {
  switch (provider) {
    case "apns":
      return /^[0-9a-fA-F]{32,200}$/.test(token) ? undefined : "an APNs device token is hexadecimal";
    case "webpush": {
      const subscription = parseSubscription(token, false);
      return typeof subscription === "string"
        ? `a Web Push token is the PushSubscription JSON: ${subscription}`
        : undefined;
    }
    case "webhook": {
      const protocol = URL.canParse(token) ? new URL(token).protocol : "";
      return protocol === "https:" || protocol === "http:" ? undefined : "a webhook token is an http(s) URL";
    }
    case "fcm":
      // Registration tokens are opaque: FCM itself says UNREGISTERED or INVALID_ARGUMENT (pruned then).
      return undefined;
  }
}
