/**
 * The push service's HTTP client for URLs that users choose: Web Push subscription endpoints and the
 * URLs of webhook devices. A user could register `http://10.0.0.7:9090/…` or a name that resolves to
 * the cloud metadata address and have the push service call it from inside the cluster (SSRF). So
 * every address such a request connects to is checked at connect time — the address the socket
 * really uses, not one resolved earlier (no DNS rebinding window) — and loopback, private,
 * link-local, shared, multicast and reserved addresses are refused unless `allowPrivate` (a test
 * stand-in, or a push relay inside the network). Only the operator's own `push.webhookUrl`, that
 * exact URL, is reached whatever its address, and only for its own jobs (operatorUrlFetch). No push
 * request follows a redirect: a 3xx is the answer (a failure), or a public URL could send the request
 * on to an address inside.
 */
import type { LookupAddress, LookupOptions } from "node:dns";
import { lookup as dnsLookup } from "node:dns";
import { Agent as HttpAgent, request as httpRequest, type IncomingHttpHeaders } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { BlockList, isIP } from "node:net";
import { errors } from "../lib/errors.js";

/** A request refused because its host is (or resolves to) an address users may not reach. */
export class BlockedAddressError extends Error {
  constructor(
    readonly host: string,
    readonly address: string,
  ) {
    super(
      `${host} is ${address === host ? "" : `at ${address}, `}an address notifications are never sent to`,
    );
    this.name = "BlockedAddressError";
  }
}

/** Everything that is not a public unicast address (IANA special-purpose registries). */
const NOT_PUBLIC = (() => {
  const list = new BlockList();
  for (const [net, bits] of [
    ["0.0.0.0", 8], // "this network"
    ["10.0.0.0", 8], // private
    ["100.64.0.0", 10], // shared (carrier-grade NAT)
    ["127.0.0.0", 8], // loopback
    ["169.254.0.0", 16], // link-local, cloud metadata
    ["172.16.0.0", 12], // private
    ["192.0.0.0", 24], // protocol assignments
    ["192.0.2.0", 24], // documentation
    ["192.88.99.0", 24], // 6to4 relay
    ["192.168.0.0", 16], // private
    ["198.18.0.0", 15], // benchmarking
    ["198.51.100.0", 24], // documentation
    ["203.0.113.0", 24], // documentation
    ["224.0.0.0", 4], // multicast
    ["240.0.0.0", 4], // reserved, broadcast
  ] as const)
    list.addSubnet(net, bits, "ipv4");
  for (const [net, bits] of [
    ["::", 128], // unspecified
    ["::1", 128], // loopback
    ["64:ff9b:1::", 48], // local-use NAT64
    ["100::", 64], // discard
    ["2001::", 23], // protocol assignments
    ["2001:db8::", 32], // documentation
    ["fc00::", 7], // unique local
    ["fe80::", 10], // link-local
    ["ff00::", 8], // multicast
  ] as const)
    list.addSubnet(net, bits, "ipv6");
  return list;
})();

/** The eight 16-bit groups of a valid IPv6 literal (a trailing dotted IPv4 part counts as two). */
function ipv6Groups(address: string): number[] {
  let text = address.toLowerCase().replace(/%.*$/, ""); // a zone id names an interface, not an address
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const groups = (part: string | undefined) =>
    part ? part.split(":").map((g) => Number.parseInt(g, 16)) : [];
  const [head, tail] = text.split("::");
  const [h, t] = [groups(head), groups(tail)];
  return [...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t];
}

/**
 * IPv6 prefixes (the first 96 bits, as groups) whose addresses carry an IPv4 address in their last 32
 * bits, which is where a connection to them ends up: IPv4-compatible (::/96, deprecated),
 * IPv4-mapped (::ffff:0:0/96) and the NAT64 well-known prefix (64:ff9b::/96, RFC 6052), which a
 * NAT64 gateway translates to that IPv4 address — 64:ff9b::a9fe:a9fe is the cloud metadata address.
 */
const CARRIES_IPV4 = new Set(["0:0:0:0:0:0", "0:0:0:0:0:ffff", "64:ff9b:0:0:0:0"]);

/** The IPv4 address an IPv6 literal of a CARRIES_IPV4 prefix stands for; undefined for the others. */
function embeddedIpv4(address: string): string | undefined {
  const g = ipv6Groups(address);
  const prefix = g.slice(0, 6).map((x) => x.toString(16));
  if (!CARRIES_IPV4.has(prefix.join(":"))) return undefined;
  const [hi, lo] = [g[6]!, g[7]!];
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/** Whether `address` (an IPv4 or IPv6 literal) is a public unicast address. */
export function isPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return !NOT_PUBLIC.check(address, "ipv4");
  if (family !== 6) return false;
  const ipv4 = embeddedIpv4(address);
  if (ipv4) return isPublicAddress(ipv4);
  return !NOT_PUBLIC.check(address, "ipv6");
}

type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | LookupAddress[],
  family?: number,
) => void;

/** A `lookup` for sockets that fails when a name resolves to any address `allowed` refuses. */
const lookupOnly =
  (allowed: (address: string) => boolean) =>
  (hostname: string, options: LookupOptions, callback: LookupCallback): void => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, []);
      const blocked = addresses.find((a) => !allowed(a.address));
      if (blocked) return callback(new BlockedAddressError(hostname, blocked.address), []);
      if (options.all) return callback(null, addresses);
      const first = addresses[0];
      if (!first)
        return callback(Object.assign(new Error(`${hostname} has no address`), { code: "ENOTFOUND" }), []);
      callback(null, first.address, first.family);
    });
  };

export interface GuardOptions {
  /** Let requests reach any address (tests with stand-ins on loopback, relays inside the network). */
  allowPrivate: boolean;
  /** Which addresses may be reached (default: public unicast ones); tests stand loopback in. */
  addressAllowed?: (address: string) => boolean;
}

const flatHeaders = (headers: IncomingHttpHeaders): Array<[string, string]> =>
  Object.entries(headers).flatMap(([k, v]) =>
    v === undefined ? [] : Array.isArray(v) ? v.map((x): [string, string] => [k, x]) : [[k, v]],
  );

/** Node's fetch, never following a redirect (a 3xx is handed back as the answer). */
export const fetchWithoutRedirects: typeof fetch = (input, init) =>
  fetch(input, { ...init, redirect: "manual" });

/**
 * A `fetch` for the jobs of the operator's `push.webhookUrl`: that URL only, whatever its address (it
 * is configuration, not a user's choice). Any other URL is refused: a job stored under a webhook URL
 * configured before is retried and dead-lettered (replayed, it goes to the URL configured now).
 */
export function operatorUrlFetch(webhookUrl: string): typeof fetch {
  const only = new URL(webhookUrl).href;
  return async (input, init) => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    if (url.href !== only)
      throw errors.precondition("PUSH_URL_NOT_CONFIGURED", `${url.origin} is not push.webhookUrl`);
    return fetchWithoutRedirects(input, init);
  };
}

/**
 * A `fetch` for the push providers' requests to user-chosen URLs (a POST with a buffered body; the
 * answer's body is discarded; redirects are not followed). A refused address rejects with
 * BlockedAddressError.
 */
export function guardedFetch(options: GuardOptions): typeof fetch {
  if (options.allowPrivate) return fetchWithoutRedirects;
  const allowed = options.addressAllowed ?? isPublicAddress;
  const lookup = lookupOnly(allowed);
  // Connection pools of this guard's own: a kept-alive socket is only ever one its lookup allowed.
  const agents = {
    http: new HttpAgent({ keepAlive: true, lookup }),
    https: new HttpsAgent({ keepAlive: true, lookup }),
  };
  return async (input, init) => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    const host = url.hostname.replace(/^\[|\]$/g, "");
    // A literal address connects without a lookup: judge it here.
    if (isIP(host) && !allowed(host)) throw new BlockedAddressError(host, host);
    const body = init?.body;
    if (body !== undefined && body !== null && typeof body !== "string" && !(body instanceof Uint8Array)) {
      throw new TypeError("guardedFetch sends string or byte bodies only");
    }
    const https = url.protocol === "https:";
    const request = https ? httpsRequest : httpRequest;
    const headers: Record<string, string> = {};
    new Headers(init?.headers).forEach((value, name) => {
      headers[name] = value;
    });
    return new Promise<Response>((resolve, reject) => {
      const req = request(
        url,
        {
          method: init?.method ?? "GET",
          headers,
          lookup,
          agent: https ? agents.https : agents.http,
          signal: init?.signal ?? undefined,
        },
        (res) => {
          res.resume(); // the providers read only the status and headers
          const status = res.statusCode ?? 0;
          if (status < 200 || status > 599) {
            reject(new Error(`${url.origin} answered with status ${status}`));
            return;
          }
          resolve(new Response(null, { status, headers: flatHeaders(res.headers) }));
        },
      );
      req.on("error", reject);
      req.end(body ?? undefined);
    });
  };
}
