/**
 * Kubernetes ServiceAccount tokens as gRPC credentials (ADR 0007): a caller in the cluster sends its
 * projected, audience-bound token as `authorization: Bearer …`; the API server's TokenReview says
 * whether it is valid for our audience and whose it is (a deleted ServiceAccount's bound tokens fail at
 * once), and configuration maps that ServiceAccount to a principal. Answers are cached per token (by
 * its hash) until the earlier of its expiry and `cacheTtlMs`, at most `cacheMax` of them, so a busy
 * caller costs one review a minute, not one per call.
 */
import { createHash } from "node:crypto";
import type { Principal } from "./policy.js";

/** What a TokenReview answered. */
export interface Review {
  authenticated: boolean;
  /** `system:serviceaccount:<namespace>:<name>` for a ServiceAccount token. */
  username?: string | undefined;
  audiences?: readonly string[] | undefined;
  error?: string | undefined;
}

/** Asks the API server to review a token for `audience` (kubeTokenReviewer, or a test's own). */
export type Reviewer = (token: string, audience: string) => Promise<Review>;

export interface ServiceAccountTokensOptions {
  reviewer: Reviewer;
  /** The audience our tokens are bound to, e.g. `switchboard.dev/<cluster>`. */
  audience: string;
  /** `<namespace>/<name>` of each ServiceAccount that is a principal (a function: the mapping now). */
  accounts: ReadonlyMap<string, Principal> | (() => ReadonlyMap<string, Principal>);
  cacheTtlMs?: number;
  cacheMax?: number;
  now?: () => number;
}

const SA_PREFIX = "system:serviceaccount:";

export class ServiceAccountTokens {
  private readonly cache = new Map<string, { principal: Principal | undefined; untilMs: number }>();
  private readonly ttlMs: number;
  private readonly max: number;
  private readonly now: () => number;

  constructor(private readonly o: ServiceAccountTokensOptions) {
    this.ttlMs = o.cacheTtlMs ?? 60_000;
    this.max = o.cacheMax ?? 10_000;
    this.now = o.now ?? Date.now;
  }

  /** The principal of a valid token for our audience, or undefined. Throws only if the review failed. */
  async verify(token: string): Promise<Principal | undefined> {
    const key = createHash("sha256").update(token).digest("base64");
    const hit = this.cache.get(key);
    if (hit && hit.untilMs > this.now()) return hit.principal;
    this.cache.delete(key);
    const review = await this.o.reviewer(token, this.o.audience);
    const principal = this.principalOf(review);
    if (this.cache.size >= this.max) this.cache.delete(this.cache.keys().next().value as string);
    this.cache.set(key, {
      principal,
      untilMs: Math.min(this.now() + this.ttlMs, expiryMs(token) ?? Infinity),
    });
    return principal;
  }

  private principalOf(review: Review): Principal | undefined {
    if (!review.authenticated || !review.username?.startsWith(SA_PREFIX)) return undefined;
    // The API server answers for the audiences it checked; a token not bound to ours is no credential.
    if (review.audiences !== undefined && !review.audiences.includes(this.o.audience)) return undefined;
    const [namespace, name] = review.username.slice(SA_PREFIX.length).split(":");
    const accounts = typeof this.o.accounts === "function" ? this.o.accounts() : this.o.accounts;
    return accounts.get(`${namespace}/${name}`);
  }
}

/** The token's `exp` in ms, read without verifying (only to bound the cache; the review verifies). */
function expiryMs(token: string): number | undefined {
  try {
    const payload = JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString()) as {
      exp?: unknown;
    };
    return typeof payload.exp === "number" ? payload.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A Reviewer that calls the API server's TokenReview with the process's own Kubernetes credentials
 * (in a Pod: its ServiceAccount, which needs `create` on `tokenreviews`; elsewhere: KUBECONFIG).
 * @kubernetes/client-node is imported only by a process that reviews tokens.
 */
export async function kubeTokenReviewer(kubeconfigFile?: string): Promise<Reviewer> {
  const k8s = await import("@kubernetes/client-node");
  const kc = new k8s.KubeConfig();
  if (kubeconfigFile) kc.loadFromFile(kubeconfigFile);
  else kc.loadFromDefault();
  const api = kc.makeApiClient(k8s.AuthenticationV1Api);
  return async (token, audience) => {
    const res = await api.createTokenReview({
      body: {
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenReview",
        spec: { token, audiences: [audience] },
      },
    });
    const s = res.status;
    return {
      authenticated: s?.authenticated === true,
      username: s?.user?.username,
      audiences: s?.audiences,
      error: s?.error,
    };
  };
}
