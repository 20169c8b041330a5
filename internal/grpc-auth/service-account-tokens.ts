/**
 * Kubernetes ServiceAccount tokens as gRPC credentials (ADR 0007): a caller in the cluster sends its
 * projected, audience-bound token as `authorization: Bearer …`; the API server's TokenReview says
 * whether it is valid for our audience and whose it is (a deleted ServiceAccount's bound tokens fail at
 * once), and configuration maps that ServiceAccount to a principal. Answers are cached per token (by
 * its hash) until the earlier of its expiry and `cacheTtlMs`, at most `cacheMax` of them, so a busy
 * caller costs one review a minute, not one per call.
 */
import { createHash } from "node:crypto";
import { dropOldest } from "../lib/drop-oldest.js";
import { errors } from "../lib/errors.js";
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
  /** How long a refused token stays refused without a new review (default 10 s), and how many. */
  refusedTtlMs?: number;
  refusedMax?: number;
  /** Reviews started per second at most (default 20): past it a call is UNAVAILABLE, to retry. */
  reviewsPerSecond?: number;
  now?: () => number;
}

const SA_PREFIX = "system:serviceaccount:";

/**
 * Anyone who reaches the port can send a token, so what a junk token costs is bounded: refused tokens
 * are remembered apart from accepted ones (they cannot push a busy role's token out of the cache),
 * a token under review is reviewed once however many calls carry it, and reviews start at a bounded
 * rate, past which a call is UNAVAILABLE (callers retry) rather than a flood of TokenReviews that
 * would get this process's own account throttled by the API server.
 */
export class ServiceAccountTokens {
  /** Accepted tokens, least recently used first (kept past their review's lapse, until evicted). */
  private readonly accepted = new Map<string, { principal: Principal; untilMs: number }>();
  private readonly refused = new Map<string, number>(); // token hash → refused until (ms)
  private readonly reviewing = new Map<string, Promise<Principal | undefined>>();
  private readonly ttlMs: number;
  private readonly max: number;
  private readonly refusedTtlMs: number;
  private readonly refusedMax: number;
  private readonly reviewsPerSecond: number;
  private readonly now: () => number;
  private reviewWindowMs = 0;
  private reviewsInWindow = 0;

  constructor(private readonly o: ServiceAccountTokensOptions) {
    this.ttlMs = o.cacheTtlMs ?? 60_000;
    this.max = o.cacheMax ?? 10_000;
    this.refusedTtlMs = o.refusedTtlMs ?? 10_000;
    this.refusedMax = o.refusedMax ?? 1_000;
    this.reviewsPerSecond = o.reviewsPerSecond ?? 20;
    this.now = o.now ?? Date.now;
  }

  /**
   * The principal of a valid token for our audience, or undefined. Throws UNAVAILABLE if it could not
   * be reviewed now (the API server failed, or too many reviews this second).
   */
  async verify(token: string): Promise<Principal | undefined> {
    const key = createHash("sha256").update(token).digest("base64");
    const now = this.now();
    const hit = this.accepted.get(key);
    if (hit && hit.untilMs > now) {
      this.accepted.delete(key);
      this.accepted.set(key, hit); // most recently used
      return hit.principal;
    }
    const refusedUntil = this.refused.get(key);
    if (refusedUntil !== undefined) {
      if (refusedUntil > now) return undefined;
      this.refused.delete(key);
    }
    const pending = this.reviewing.get(key);
    if (pending) return pending;
    // A token accepted before (its cache entry lapsed) is reviewed whatever the rate: junk tokens
    // must not keep the cluster's own callers out.
    if (!hit) this.takeReview(now);
    const review = this.review(key, token).finally(() => this.reviewing.delete(key));
    this.reviewing.set(key, review);
    return review;
  }

  private takeReview(now: number): void {
    if (now - this.reviewWindowMs >= 1_000) {
      this.reviewWindowMs = now;
      this.reviewsInWindow = 0;
    }
    if (++this.reviewsInWindow > this.reviewsPerSecond)
      throw errors.unavailable("TOKEN_REVIEWS_BUSY", "too many tokens to review this second; try again");
  }

  private async review(key: string, token: string): Promise<Principal | undefined> {
    let review: Review;
    try {
      review = await this.o.reviewer(token, this.o.audience);
    } catch (err) {
      throw errors.unavailable("TOKEN_REVIEW_FAILED", "the token could not be reviewed now; try again", err);
    }
    const principal = this.principalOf(review);
    const now = this.now();
    if (principal === undefined) {
      this.accepted.delete(key);
      if (this.refused.size >= this.refusedMax) dropOldest(this.refused);
      this.refused.set(key, now + this.refusedTtlMs);
      return undefined;
    }
    this.accepted.delete(key);
    if (this.accepted.size >= this.max) dropOldest(this.accepted);
    this.accepted.set(key, { principal, untilMs: Math.min(now + this.ttlMs, expiryMs(token) ?? Infinity) });
    return principal;
  }

  private principalOf(review: Review): Principal | undefined {
    if (!review.authenticated || !review.username?.startsWith(SA_PREFIX)) return undefined;
    // A review must name our audience: one that names none (an authenticator that does not bind
    // audiences) says nothing about a token bound to ours.
    if (!review.audiences?.includes(this.o.audience)) return undefined;
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
