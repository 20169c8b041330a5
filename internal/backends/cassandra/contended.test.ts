import { describe, expect, it } from "vitest";
import { Code } from "../../lib/errors.js";
import { contended } from "./session.js";

describe("a CAS loop that ran out of attempts", () => {
  it("says it kept losing races when every attempt was answered", () => {
    const err = contended("receipts: raise watermark", 16, undefined);
    expect(err).toMatchObject({ code: Code.UNAVAILABLE, reason: "STORAGE_UNAVAILABLE" });
    expect(err.message).toBe(
      "receipts: raise watermark: conditional write still conflicting after 16 attempts",
    );
  });

  it("names the error when an attempt went unanswered, so an outage does not read as contention", () => {
    const err = contended(
      "partition_owners: claim drafts/7",
      16,
      new Error("All host(s) tried for query failed"),
    );
    expect(err.message).toBe(
      "partition_owners: claim drafts/7: conditional write not applied (Cassandra unavailable or conflicting; last error: All host(s) tried for query failed) after 16 attempts",
    );
    // What a client is told leaves the driver's text (node addresses) out.
    expect(err.publicMessage).toBe(
      "partition_owners: claim drafts/7: conditional write not applied after 16 attempts; retry",
    );
    expect(err.retryAfterMs).toBe(1_000);
  });
});
