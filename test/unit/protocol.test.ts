/**
 * docs/protocol.md is the contract independent clients are written from: where it and the server
 * disagree, the server is not what its clients expect. These checks keep the tables exact.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CloseCode, RECONNECT_CODES } from "../../internal/gateway/close-codes.js";
import { CLOSE_CODES as SDK_CLOSE_CODES } from "../../sdk/src/close-codes.js";
import { documentedReasons, protocolDoc, tableAfter } from "../helpers/protocol-doc.js";
import { repoRoot } from "../helpers/server.js";

const protocol = protocolDoc;

describe("docs/protocol.md", () => {
  it("lists every close code the gateway sends, under its name (§7)", () => {
    const rows = tableAfter("## 7. Close codes");
    // 1006 is never sent (the peer sees it), 1002, 1007 and 1008 come from the WebSocket layer itself.
    const fromWs = new Set(["1002", "1006", "1007", "1008"]);
    const documented = Object.fromEntries(
      rows.filter(([code]) => !fromWs.has(code!)).map(([code, name]) => [name, Number(code)]),
    );
    const { NORMAL: _never, ...sent } = CloseCode; // "The server never starts a close with 1000."
    expect(documented).toEqual(sent);
  });

  it("is what the SDK acts on: every code the gateway sends, under its name, reconnecting exactly on the reconnect-class ones", () => {
    for (const [name, code] of Object.entries(CloseCode)) {
      const sdk = SDK_CLOSE_CODES[code as keyof typeof SDK_CLOSE_CODES];
      expect(sdk?.name, `close ${code}`).toBe(name);
      // 1000 from the server means "come back" to the SDK (only the app's own close() is final).
      if (code !== CloseCode.NORMAL) expect(sdk.reconnect, `close ${code}`).toBe(RECONNECT_CODES.has(code));
    }
  });

  it("says which close follows each failed auth frame, as the gateway does (§1.3, §6, §7)", () => {
    const errors = Object.fromEntries(tableAfter("## 6. Errors").map((r) => [r[0], r[2]]));
    expect(errors["`INVALID_TOKEN`"]).toContain(`Close ${CloseCode.INVALID_TOKEN} follows`);
    expect(errors["`TOKEN_EXPIRED`"]).toContain(`Close ${CloseCode.TOKEN_EXPIRED} follows`);
    // Anywhere TOKEN_EXPIRED and 3500 meet, 3005 is what the sentence gives the expired token.
    for (const line of protocol.split("\n").filter((l) => l.includes("TOKEN_EXPIRED") && l.includes("3500")))
      expect(line).toContain(String(CloseCode.TOKEN_EXPIRED));
    const closes = Object.fromEntries(tableAfter("## 7. Close codes").map((r) => [r[0], r[2]]));
    expect(closes["3005"]).toContain("TOKEN_EXPIRED");
    expect(closes["3500"]).not.toMatch(/including expired/);
  });

  it("documents every error reason a WebSocket client can get (§6)", () => {
    const reasons = documentedReasons();
    const raised = new Set<string>();
    const sources = (dir: string) =>
      readdirSync(join(repoRoot, dir))
        .filter((f) => f.endsWith(".ts") && !f.endsWith(".test.ts"))
        .map((f) => join(dir, f));
    // The gateway and the conversation rules, the token check, and the storage errors of both
    // backends that reach a request's reply.
    for (const file of [
      ...sources("internal/gateway"),
      ...sources("internal/conversations"),
      ...sources("internal/backends/embedded"),
      "internal/lib/auth.ts",
      "internal/backends/kafka/log.ts",
      "internal/backends/cassandra/session.ts",
    ]) {
      const source = readFileSync(join(repoRoot, file), "utf8");
      for (const m of source.matchAll(/errors\.\w+\(\s*"([A-Z_]+)"/g)) raised.add(m[1]!);
      for (const m of source.matchAll(/new SwitchboardError\(\s*Code\.\w+,\s*"([A-Z_]+)"/g))
        raised.add(m[1]!);
    }
    expect(raised).toContain("INVALID_UNICODE");
    expect(raised).toContain("SEQUENCE_TIMEOUT");
    // An error at start-up (configuration, the data dir), before any connection.
    const notReplies = new Set([
      "INVALID_KEYSPACE",
      "DATA_DIR_IN_USE",
      "DATA_FORMAT_NEWER",
      "DATA_DIR_FULL",
      "DATA_DIR_UNWRITABLE",
    ]);
    expect([...raised].filter((r) => !reasons.has(r) && !notReplies.has(r))).toEqual([]);
  });
});
