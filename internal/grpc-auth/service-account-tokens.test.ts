import { describe, expect, it } from "vitest";
import { type Review, ServiceAccountTokens } from "./service-account-tokens.js";

const AUDIENCE = "switchboard.dev/test";

/** A reviewer that knows one good token per ServiceAccount and counts its reviews per token. */
function fakeReviewer(answer?: (token: string) => Promise<Review>) {
  const reviews = new Map<string, number>();
  const reviewer = async (token: string) => {
    reviews.set(token, (reviews.get(token) ?? 0) + 1);
    if (answer) return answer(token);
    return token === "good.token.billing"
      ? { authenticated: true, username: "system:serviceaccount:ns:billing", audiences: [AUDIENCE] }
      : { authenticated: false, error: "invalid bearer token" };
  };
  return { reviewer, reviews };
}

const tokens = (reviewer: (t: string) => Promise<Review>, more: object = {}) =>
  new ServiceAccountTokens({
    reviewer,
    audience: AUDIENCE,
    accounts: new Map([["ns/billing", "client:billing"]]),
    reviewsPerSecond: 1_000_000,
    ...more,
  });

describe("ServiceAccountTokens", () => {
  it("keeps a busy caller's token cached however many junk tokens are refused", async () => {
    const { reviewer, reviews } = fakeReviewer();
    const v = tokens(reviewer);
    expect(await v.verify("good.token.billing")).toBe("client:billing");
    for (let i = 0; i < 10_001; i++) expect(await v.verify(`junk.token.${i}`)).toBeUndefined();
    expect(await v.verify("good.token.billing")).toBe("client:billing");
    expect(reviews.get("good.token.billing")).toBe(1);
    // A refused token is refused again without a review for a while.
    expect(await v.verify("junk.token.10000")).toBeUndefined();
    expect(reviews.get("junk.token.10000")).toBe(1);
  });

  it("reviews a token once however many calls carry it at the same time", async () => {
    let answer!: (r: Review) => void;
    const { reviewer, reviews } = fakeReviewer(() => new Promise((r) => (answer = r)));
    const v = tokens(reviewer);
    const calls = Array.from({ length: 50 }, () => v.verify("good.token.billing"));
    answer({ authenticated: true, username: "system:serviceaccount:ns:billing", audiences: [AUDIENCE] });
    expect(await Promise.all(calls)).toEqual(Array(50).fill("client:billing"));
    expect(reviews.get("good.token.billing")).toBe(1);
  });

  it("takes no review that names no audience, and makes a failed review UNAVAILABLE", async () => {
    const noAudience = tokens(async () => ({
      authenticated: true,
      username: "system:serviceaccount:ns:billing",
    }));
    expect(await noAudience.verify("good.token.billing")).toBeUndefined();
    const failing = tokens(async () => {
      throw new Error("429 Too Many Requests");
    });
    await expect(failing.verify("good.token.billing")).rejects.toMatchObject({
      reason: "TOKEN_REVIEW_FAILED",
      code: 14, // UNAVAILABLE: the caller retries
    });
  });

  it("starts at most reviewsPerSecond reviews a second; past them a call is UNAVAILABLE", async () => {
    let now = 0;
    const { reviewer } = fakeReviewer();
    const v = tokens(reviewer, { reviewsPerSecond: 3, now: () => now });
    for (let i = 0; i < 3; i++) await v.verify(`junk.token.${i}`);
    await expect(v.verify("good.token.billing")).rejects.toMatchObject({ reason: "TOKEN_REVIEWS_BUSY" });
    now = 1_000;
    expect(await v.verify("good.token.billing")).toBe("client:billing");
    // Junk fills the next second's reviews; a token accepted before is reviewed again all the same
    // once its entry lapses (cacheTtlMs 60 s): junk must not keep the cluster's own callers out.
    now = 61_500;
    for (let i = 10; i < 13; i++) await v.verify(`junk.token.${i}`);
    await expect(v.verify("junk.token.99")).rejects.toMatchObject({ reason: "TOKEN_REVIEWS_BUSY" });
    expect(await v.verify("good.token.billing")).toBe("client:billing");
  });
});
