import { describe, expect, it } from "vitest";
import { errors } from "../lib/errors.js";
import { isConfigurationError } from "./all.js";

describe("role all: which storage errors end the start instead of being retried", () => {
  it("ends it for a refused configuration and for a build that cannot load", () => {
    expect(isConfigurationError(errors.precondition("PARTITIONS_CHANGED", "x"))).toBe(true);
    expect(isConfigurationError(errors.invalid("INVALID_KEYSPACE", "x"))).toBe(true);
    expect(
      isConfigurationError(Object.assign(new Error("x"), { name: "KafkaJSSASLAuthenticationError" })),
    ).toBe(true);
    // A module whose import fails (a named export not found) fails every attempt the same way.
    expect(isConfigurationError(new SyntaxError("Named export 'X' not found"))).toBe(true);
    expect(isConfigurationError(new ReferenceError("x is not defined"))).toBe(true);
  });

  it("retries what waiting can cure", () => {
    expect(isConfigurationError(errors.unavailable("STORAGE_UNAVAILABLE", "x"))).toBe(false);
    expect(isConfigurationError(new Error("connect ECONNREFUSED 127.0.0.1:9042"))).toBe(false);
    // A driver's race can throw a TypeError that its next attempt does not.
    expect(isConfigurationError(new TypeError("Cannot read properties of null (reading 'once')"))).toBe(
      false,
    );
  });
});
