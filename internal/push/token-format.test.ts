import { createECDH } from "node:crypto";
import { describe, expect, it } from "vitest";
import { tokenProblem } from "./token-format.js";

const ecdh = createECDH("prime256v1");
ecdh.setPrivateKey(Buffer.alloc(32, 1)); // its public key in standard base64 has "/" and "+"
/** A browser's public key: an uncompressed point on P-256. */
const point = ecdh.getPublicKey();

const subscription = (
  endpoint: string,
  p256dh = point.toString("base64url"),
  auth = Buffer.alloc(16, 2).toString("base64url"),
) => JSON.stringify({ endpoint, keys: { p256dh, auth } });

describe("device token forms", () => {
  it("accepts each provider's form", () => {
    expect(tokenProblem("apns", "ab".repeat(32))).toBeUndefined();
    expect(tokenProblem("fcm", "dXNlcjE6APA91bH…")).toBeUndefined();
    expect(tokenProblem("webpush", subscription("https://fcm.googleapis.com/fcm/send/abc"))).toBeUndefined();
    expect(tokenProblem("webhook", "https://hooks.example.com/chat")).toBeUndefined();
  });

  it("names what is wrong", () => {
    expect(tokenProblem("apns", "not-hex")).toBe("an APNs device token is 32 to 200 hexadecimal digits");
    expect(tokenProblem("apns", "abcdef0123")).toBe("an APNs device token is 32 to 200 hexadecimal digits");
    expect(tokenProblem("webpush", "https://push.example/x")).toBe(
      "a Web Push token is the PushSubscription JSON: the token is not subscription JSON",
    );
    expect(tokenProblem("webpush", subscription("http://push.example/x"))).toMatch(/not https/);
    const x = "https://push.example/x";
    expect(tokenProblem("webpush", subscription(x, point.subarray(0, 33).toString("base64url")))).toMatch(
      /not a P-256 point/,
    );
    // 65 bytes that begin as a point does, off the curve: its first notification could not be encrypted.
    const offCurve = Buffer.from(point);
    offCurve[64] = offCurve[64]! ^ 1;
    expect(tokenProblem("webpush", subscription(x, offCurve.toString("base64url")))).toMatch(
      /not a P-256 point/,
    );
    // base64url only (padding may be there or not): standard base64's "+" and "/" are not.
    expect(tokenProblem("webpush", subscription(x, point.toString("base64")))).toMatch(/not base64url/);
    expect(
      tokenProblem("webpush", subscription(x, undefined, Buffer.alloc(16, 0xfb).toString("base64"))),
    ).toMatch(/not base64url/);
    expect(tokenProblem("webpush", subscription(x, `${point.toString("base64url")}=`))).toBeUndefined();
    expect(tokenProblem("webhook", "ftp://x")).toBe("a webhook token is an http(s) URL");
  });

  it("refuses users' URLs on loopback names and literal non-public addresses, unless allowed", () => {
    for (const url of [
      "http://localhost:8080/hook",
      "https://api.localhost/hook",
      "http://LOCALHOST./x", // the DNS root's dot changes nothing
      "http://api.localhost../hook",
      "http://127.0.0.1/hook",
      "http://10.0.0.7:9090/",
      "http://169.254.169.254/latest/meta-data",
      "http://[::1]/hook",
      "http://[fd00::1]/hook",
      "http://[64:ff9b::a00:7]/", // NAT64 of 10.0.0.7
      "http://[64:ff9b::169.254.169.254]/latest/meta-data",
    ]) {
      expect(tokenProblem("webhook", url), url).toMatch(/is not a public address/);
      expect(tokenProblem("webhook", url, true), url).toBeUndefined();
    }
    expect(tokenProblem("webpush", subscription("https://127.0.0.1/push/x"))).toMatch(
      /127\.0\.0\.1 is not a public address/,
    );
    expect(tokenProblem("webpush", subscription("https://127.0.0.1/push/x"), true)).toBeUndefined();
    // Names are judged when a notification is sent, by the address they resolve to.
    expect(tokenProblem("webhook", "https://hooks.example.com/chat")).toBeUndefined();
  });
});
