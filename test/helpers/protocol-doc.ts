/**
 * docs/protocol.md read as data: the tables independent clients are written from, so tests can
 * hold the server to them.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { repoRoot } from "./server.js";

export const protocolDoc = readFileSync(join(repoRoot, "docs/protocol.md"), "utf8");

/** The rows of the Markdown table that follows `heading`, as arrays of trimmed cells. */
export function tableAfter(heading: string): string[][] {
  const section = protocolDoc.slice(protocolDoc.indexOf(heading));
  const lines = section.split("\n");
  const start = lines.findIndex((l) => l.startsWith("|"));
  const rows: string[][] = [];
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith("|")) break;
    rows.push(
      line
        .split("|")
        .slice(1, -1)
        .map((c) => c.trim()),
    );
  }
  return rows;
}

/** Every error reason §6 names: its table's rows and the reasons its prose backticks. */
export function documentedReasons(): Set<string> {
  const reasons = new Set(tableAfter("## 6. Errors").map((r) => r[0]!.replaceAll("`", "")));
  const section = protocolDoc.slice(
    protocolDoc.indexOf("## 6. Errors"),
    protocolDoc.indexOf("## 7. Close codes"),
  );
  for (const m of section.matchAll(/`([A-Z][A-Z_]+)`/g)) reasons.add(m[1]!);
  return reasons;
}

/** The close codes §7 lists. */
export function documentedCloseCodes(): Set<number> {
  return new Set(tableAfter("## 7. Close codes").map(([code]) => Number(code)));
}
