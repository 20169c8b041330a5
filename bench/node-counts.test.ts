/**
 * The bench's probe of the Cassandra node's own counts (CassandraNodeCounts) against the test node:
 * a write of two partitions of one table in one batch counts two local writes of that table, a read
 * of one partition one local read, and tables of other keyspaces do not show.
 */
import cassandra from "cassandra-driver";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureServer } from "../test/infra/servers.js";
import { CassandraNodeCounts, contactPoints, datacenter } from "./infra.js";

const keyspace = `nodecounts_${Date.now().toString(36)}`;
let infra: Record<string, string>;
let client: cassandra.Client;

beforeAll(async () => {
  infra = await ensureServer("cassandra");
  client = new cassandra.Client({ contactPoints: contactPoints(infra), localDataCenter: datacenter(infra) });
  await client.connect();
  await client.execute(
    `CREATE KEYSPACE ${keyspace} WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}`,
  );
  await client.execute(`CREATE TABLE ${keyspace}.t (k text PRIMARY KEY, v text)`);
});
afterAll(async () => {
  await client?.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`);
  await client?.shutdown();
});

describe("the Cassandra node's local counts", () => {
  it("counts one local write per partition of a batch and one local read per partition read", async () => {
    const counts = new CassandraNodeCounts(infra, keyspace, (line) => {
      throw new Error(`unexpected: ${line}`);
    });
    try {
      const before = await counts.read();
      expect(before).toBeDefined();
      await client.batch(
        [
          { query: `INSERT INTO ${keyspace}.t (k, v) VALUES (?, ?)`, params: ["a", "1"] },
          { query: `INSERT INTO ${keyspace}.t (k, v) VALUES (?, ?)`, params: ["b", "2"] },
        ],
        { prepare: true, logged: false },
      );
      await client.execute(`SELECT v FROM ${keyspace}.t WHERE k = ?`, ["a"], { prepare: true });
      const after = await counts.read();
      expect((after!["write:t"] ?? 0) - (before!["write:t"] ?? 0)).toBe(2);
      expect((after!["read:t"] ?? 0) - (before!["read:t"] ?? 0)).toBe(1);
      expect(Object.keys(after!).every((k) => /^(read|write):t$/.test(k))).toBe(true);
    } finally {
      await counts.close();
    }
  });
});
