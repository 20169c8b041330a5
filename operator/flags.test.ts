import { describe, expect, it } from "vitest";
import { parseOperatorFlags } from "./flags.js";

describe("parseOperatorFlags", () => {
  it("reads the defaults and the chart's flags", () => {
    expect(parseOperatorFlags([])).toEqual({
      httpPort: 8081,
      httpHost: "0.0.0.0",
      leaseNamespace: undefined,
      leaseName: "switchboard-operator",
      workers: 2,
      pollIntervalMs: 10_000,
      serviceAccount: undefined,
      tokenReviewClusterRole: "switchboard-tokenreview",
      watchNamespaces: [],
    });
    expect(
      parseOperatorFlags([
        "--http-port",
        "0",
        "--workers",
        "8",
        "--poll-interval",
        "500ms",
        "--lease-name",
        "sb-switchboard-operator",
        "--lease-namespace",
        "switchboard-system",
        "--service-account",
        "switchboard-system/sb-switchboard-operator",
        "--watch-namespaces",
        "chat,chat-staging",
      ]),
    ).toMatchObject({
      httpPort: 0,
      workers: 8,
      pollIntervalMs: 500,
      leaseName: "sb-switchboard-operator",
      leaseNamespace: "switchboard-system",
      serviceAccount: { namespace: "switchboard-system", name: "sb-switchboard-operator" },
      watchNamespaces: ["chat", "chat-staging"],
    });
    expect(parseOperatorFlags(["--poll-interval", "0.1s"]).pollIntervalMs).toBe(100);
    expect(parseOperatorFlags(["--poll-interval", "2"]).pollIntervalMs).toBe(2000);
  });

  it("refuses a bad value at once, naming the flag: before any API call, never a NaN or a spinning loop", () => {
    const refused: Array<[string[], RegExp]> = [
      [["--workers", "abc"], /--workers "abc": want a whole number from 1 to 64/],
      [["--workers", "0"], /--workers/],
      [["--workers", "1.5"], /--workers/],
      [["--workers", "1e3"], /--workers/],
      [["--workers", ""], /--workers/],
      [["--workers", "65"], /--workers/],
      [["--poll-interval", "0s"], /--poll-interval 0s: must be at least 100ms/],
      [["--poll-interval", "0"], /--poll-interval/],
      [["--poll-interval", "99ms"], /--poll-interval/],
      [["--poll-interval", "ten"], /--poll-interval "ten": not a duration/],
      [["--http-port", "http"], /--http-port/],
      [["--http-port", "65536"], /--http-port/],
      [["--lease-name", "Not A Name"], /--lease-name/],
      [["--lease-namespace", "a/b"], /--lease-namespace/],
      [["--service-account", "nobody"], /--service-account nobody: expected namespace\/name/],
      [["--token-review-cluster-role", ""], /--token-review-cluster-role/],
      [["--watch-namespaces", "chat,"], /--watch-namespaces "": not a valid namespace name/],
      [["--watch-namespaces", "Chat"], /--watch-namespaces "Chat"/],
      [["--watch-namespaces", "chat,chat"], /--watch-namespaces: chat is named twice/],
      [["--wokers", "2"], /Unknown option '--wokers'/],
      [["stray"], /positional argument/],
    ];
    for (const [argv, message] of refused)
      expect(() => parseOperatorFlags(argv), argv.join(" ")).toThrow(message);
  });
});
