/**
 * ServiceAccount tokens as gRPC credentials (ADR 0007), reviewed by the real API server's
 * TokenReview: a token bound to our audience maps to the principal configured for its ServiceAccount;
 * a token of another audience, of an unmapped account, an expired one, or one whose ServiceAccount was
 * deleted maps to nothing.
 */
import { createPrivateKey, randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { importPKCS8, SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  kubeTokenReviewer,
  type Reviewer,
  ServiceAccountTokens,
} from "../../internal/grpc-auth/service-account-tokens.js";
import { kubectl, kubeTools, type Tools } from "./helpers.js";

const NS = `sb-sat-${randomBytes(3).toString("hex")}`;
const AUDIENCE = `switchboard.dev/${NS}`;
let tools: Tools;
let reviewer: Reviewer;

const tokenOf = async (account: string, audience = AUDIENCE) =>
  (
    await kubectl(tools, ["-n", NS, "create", "token", account, "--audience", audience, "--duration", "10m"])
  ).trim();

const verifier = () =>
  new ServiceAccountTokens({
    reviewer,
    audience: AUDIENCE,
    accounts: new Map([[`${NS}/billing`, "client:billing"]]),
    cacheTtlMs: 0,
  });

beforeAll(async () => {
  tools = await kubeTools();
  await kubectl(tools, ["create", "namespace", NS]);
  for (const sa of ["billing", "stranger"]) await kubectl(tools, ["-n", NS, "create", "serviceaccount", sa]);
  reviewer = await kubeTokenReviewer(tools.KUBECONFIG);
}, 120_000);

afterAll(async () => {
  if (tools) await kubectl(tools, ["delete", "namespace", NS, "--wait=false"]).catch(() => undefined);
});

describe("ServiceAccount tokens (TokenReview)", () => {
  it("maps a token bound to our audience to its ServiceAccount's principal", async () => {
    expect(await verifier().verify(await tokenOf("billing"))).toBe("client:billing");
  });

  it("refuses another audience, an unmapped account and garbage", async () => {
    const v = verifier();
    expect(await v.verify(await tokenOf("billing", "someone-else"))).toBeUndefined();
    expect(await v.verify(await tokenOf("stranger"))).toBeUndefined();
    expect(await v.verify("not.a.token")).toBeUndefined();
  });

  it("refuses an expired token", async () => {
    // Signed with the cluster's own ServiceAccount key, so only its expiry is wrong.
    const keyPem = await readFile(join(dirname(tools.KUBECONFIG), "pki", "sa.key"), "utf8");
    const uid = (
      await kubectl(tools, ["-n", NS, "get", "sa", "billing", "-o", "jsonpath={.metadata.uid}"])
    ).trim();
    const now = Math.floor(Date.now() / 1000);
    const expired = await new SignJWT({
      "kubernetes.io": { namespace: NS, serviceaccount: { name: "billing", uid } },
    })
      .setProtectedHeader({ alg: "ES256" })
      .setIssuer("https://kubernetes.default.svc.cluster.local")
      .setSubject(`system:serviceaccount:${NS}:billing`)
      .setAudience(AUDIENCE)
      .setIssuedAt(now - 7200)
      .setNotBefore(now - 7200)
      .setExpirationTime(now - 3600)
      .sign(await importPKCS8(pkcs8(keyPem), "ES256"));
    expect(await verifier().verify(expired)).toBeUndefined();
  });

  it("refuses a token once its ServiceAccount is deleted", async () => {
    await kubectl(tools, ["-n", NS, "create", "serviceaccount", "shortlived"]);
    const v = new ServiceAccountTokens({
      reviewer,
      audience: AUDIENCE,
      accounts: new Map([[`${NS}/shortlived`, "client:shortlived"]]),
      cacheTtlMs: 0,
    });
    const token = await tokenOf("shortlived");
    expect(await v.verify(token)).toBe("client:shortlived");
    await kubectl(tools, ["-n", NS, "delete", "serviceaccount", "shortlived"]);
    // The API server caches a successful review for a few seconds; after that the token is dead.
    const deadline = Date.now() + 30_000;
    let principal = await v.verify(token);
    while (principal !== undefined && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 500));
      principal = await v.verify(token);
    }
    expect(principal).toBeUndefined();
  }, 60_000);
});

/** jose wants PKCS#8; the test plane's key may be SEC1 ("EC PRIVATE KEY"). */
function pkcs8(pem: string): string {
  if (pem.includes("BEGIN PRIVATE KEY")) return pem;
  return createPrivateKey(pem).export({ type: "pkcs8", format: "pem" }).toString();
}
