/**
 * The flags of `switchboard operator`, parsed and validated before anything starts: a bad value
 * fails the command at once with a message naming the flag, not after the process has won the
 * election (a NaN worker count, a zero poll interval spinning the reconcile loop).
 */
import { parseArgs } from "node:util";
import type { AccountRef } from "./controller/grpc-identity.js";
import { DEFAULT_TOKEN_REVIEW_CLUSTER_ROLE } from "./controller/reconciler.js";

export interface OperatorFlags {
  httpPort: number;
  httpHost: string;
  leaseNamespace: string | undefined;
  leaseName: string;
  workers: number;
  pollIntervalMs: number;
  /** `namespace/name` of the operator's ServiceAccount, when given. */
  serviceAccount: AccountRef | undefined;
  tokenReviewClusterRole: string;
  /** The namespaces whose ChatClusters it manages; empty: every namespace. */
  watchNamespaces: string[];
}

/** Most concurrent reconciles (the chart's values schema says the same). */
export const MAX_WORKERS = 64;
/**
 * Shortest poll interval: live gateway counts are read and the cluster is requeued this often, so
 * zero (or next to it) would spin the reconcile loop against the API server and the gateways.
 */
export const MIN_POLL_INTERVAL_MS = 100;

/** `switchboard operator [--http-port N] [--lease-namespace NS] [--workers N] ...`; throws on a bad flag. */
export function parseOperatorFlags(argv: string[]): OperatorFlags {
  const { values } = parseArgs({
    args: argv,
    options: {
      "http-port": { type: "string", default: "8081" },
      "http-host": { type: "string", default: "0.0.0.0" },
      "lease-namespace": { type: "string" },
      "lease-name": { type: "string", default: "switchboard-operator" },
      workers: { type: "string", default: "2" },
      "poll-interval": { type: "string", default: "10s" },
      // namespace/name; in a Pod, the chart passes its own (POD_NAMESPACE and its ServiceAccount).
      "service-account": { type: "string" },
      "token-review-cluster-role": { type: "string", default: DEFAULT_TOKEN_REVIEW_CLUSTER_ROLE },
      // ns1,ns2: only these namespaces' ChatClusters (and it needs rights in those alone).
      "watch-namespaces": { type: "string", default: "" },
    },
    strict: true,
    allowPositionals: false,
  });
  const pollIntervalMs = parseDuration("--poll-interval", values["poll-interval"]);
  if (pollIntervalMs < MIN_POLL_INTERVAL_MS)
    throw new Error(
      `--poll-interval ${values["poll-interval"]}: must be at least ${MIN_POLL_INTERVAL_MS}ms (it paces the reconcile loop)`,
    );
  const leaseName = values["lease-name"];
  if (!DNS_SUBDOMAIN.test(leaseName) || leaseName.length > 253)
    throw new Error(`--lease-name ${JSON.stringify(leaseName)}: not a valid object name`);
  const leaseNamespace = values["lease-namespace"];
  if (leaseNamespace !== undefined && !DNS_LABEL.test(leaseNamespace))
    throw new Error(`--lease-namespace ${JSON.stringify(leaseNamespace)}: not a valid namespace name`);
  const tokenReviewClusterRole = values["token-review-cluster-role"];
  if (tokenReviewClusterRole === "") throw new Error("--token-review-cluster-role: must not be empty");
  const watchNamespaces = namespaceList("--watch-namespaces", values["watch-namespaces"]);
  return {
    // 0: any free port (tests).
    httpPort: integer("--http-port", values["http-port"], 0, 65_535),
    httpHost: values["http-host"],
    leaseNamespace,
    leaseName,
    workers: integer("--workers", values.workers, 1, MAX_WORKERS),
    pollIntervalMs,
    serviceAccount: accountRef(values["service-account"]),
    tokenReviewClusterRole,
    watchNamespaces,
  };
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** A whole number in [min, max], written in decimal digits only (no "1e3", "0x10", " 2"). */
function integer(flag: string, text: string, min: number, max: number): number {
  const n = /^[0-9]+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max)
    throw new Error(`${flag} ${JSON.stringify(text)}: want a whole number from ${min} to ${max}`);
  return n;
}

/** `10s`, `1.5s`, `500ms` (a bare number is seconds), in milliseconds. */
function parseDuration(flag: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s)?$/.exec(text);
  if (!m) throw new Error(`${flag} ${JSON.stringify(text)}: not a duration; use e.g. 10s or 500ms`);
  return m[2] === "ms" ? Number(m[1]) : Number(m[1]) * 1000;
}

/** `a,b`: distinct namespace names; "" is none (every namespace). */
function namespaceList(flag: string, text: string): string[] {
  if (text === "") return [];
  const names = text.split(",");
  for (const name of names)
    if (!DNS_LABEL.test(name)) throw new Error(`${flag} ${JSON.stringify(name)}: not a valid namespace name`);
  const repeated = names.find((name, i) => names.indexOf(name) !== i);
  if (repeated !== undefined) throw new Error(`${flag}: ${repeated} is named twice`);
  return names;
}

/** `namespace/name` of a ServiceAccount flag; undefined when absent. */
function accountRef(flag: string | undefined): AccountRef | undefined {
  if (flag === undefined) return undefined;
  const m = /^([a-z0-9-]+)\/([a-z0-9.-]+)$/.exec(flag);
  if (!m) throw new Error(`--service-account ${flag}: expected namespace/name`);
  return { namespace: m[1]!, name: m[2]! };
}
