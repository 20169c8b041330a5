/**
 * The Cassandra schema of the distributed backend (docs/design.md §4), as versioned migrations.
 *
 * `migrate` creates the keyspace if needed, then applies every migration not yet recorded in
 * `schema_migrations` (version, name, checksum, applied_at), in order. Every statement uses IF NOT EXISTS,
 * so a migration that was cut off half-way (the process died after some tables) is simply applied again;
 * a version is recorded only after all its statements succeeded. A recorded migration whose statements
 * changed since (checksum mismatch) is refused: migrations are append-only, a change is a new version.
 * Processes may migrate at once (several role-all processes started together): every table is
 * created under an id derived from its keyspace and name (`tableId`), so coordinators that create it
 * concurrently agree on it instead of each minting one (the nodes would keep one and lose the writes
 * made to the other at a restart, CASSANDRA-10699). Tables created before ids were named keep theirs.
 *
 * The data model trusts Cassandra's last-write-wins with immutable values (messages, bucket markers,
 * inbox rows: re-writes carry the same values) and with values written by one fenced owner: the
 * conversation seq head and its dedupe rows are written plainly by the owner of the conversation's
 * drafts partition, with its ownership epoch as write timestamp, so a former owner's late writes always
 * lose (ADR 0002). Other values that change (an inbox head, a member count, membership itself,
 * receipt watermarks) are changed with a lightweight transaction, each on one partition only, because
 * that is all Paxos in Cassandra makes atomic.
 */
import { createHash } from "node:crypto";
import type { Client } from "cassandra-driver";
import cassandra from "cassandra-driver";
import { errors } from "../../lib/errors.js";
import { checkKeyspaceName, storageError } from "./session.js";

/** Messages per `messages_by_conversation` partition: bucket = floor((seq - 1) / SEQ_BUCKET_SIZE). */
export const SEQ_BUCKET_SIZE = 1000;
/** Entries per `inbox_by_user` partition: bucket = floor((cursor - 1) / INBOX_BUCKET_SIZE). */
export const INBOX_BUCKET_SIZE = 1000;

export const seqBucket = (seq: number): number => Math.floor((seq - 1) / SEQ_BUCKET_SIZE);
export const inboxBucket = (cursor: number): number => Math.floor((cursor - 1) / INBOX_BUCKET_SIZE);

/**
 * Keyspace replication. Tests and single-node setups use `{ class: "SimpleStrategy", replication_factor: 1 }`.
 * Production uses NetworkTopologyStrategy with three replicas per datacenter, e.g.
 * `{ class: "NetworkTopologyStrategy", datacenters: { "dc1": 3 } }`, so that LOCAL_QUORUM (2 of 3) and
 * LOCAL_SERIAL survive one replica down. The keyspace is only created, never altered: changing the
 * replication of a live keyspace is an ALTER KEYSPACE followed by a full repair, done by an operator.
 */
export type Replication =
  | { class: "SimpleStrategy"; replication_factor: number }
  | { class: "NetworkTopologyStrategy"; datacenters: Record<string, number> };

export interface Migration {
  version: number;
  name: string;
  statements: string[];
}

/** The migrations, in version order; `ks` is the keyspace name (validated: /^[a-z][a-z0-9_]*$/). */
export function migrations(ks: string): Migration[] {
  return [
    {
      version: 1,
      name: "messages and the per-conversation sequencer",
      statements: [
        // One partition per 1,000 seqs of a conversation; rows are immutable (an upsert of a stored
        // message rewrites the same values), so last-write-wins never loses anything here.
        `CREATE TABLE IF NOT EXISTS ${ks}.messages_by_conversation (
          conversation_id text,
          bucket bigint,
          seq bigint,
          message_id text,
          sender text,
          body text,
          created_at timestamp,
          client_msg_id text,
          PRIMARY KEY ((conversation_id, bucket), seq)
        ) WITH CLUSTERING ORDER BY (seq DESC)`,
        // Which buckets of a conversation hold (or are about to hold) messages: written before the
        // messages, immutable (existence only). Lets history and lastSeq find the newest bucket at or
        // below a bound without probing empty partitions.
        `CREATE TABLE IF NOT EXISTS ${ks}.buckets_by_conversation (
          conversation_id text,
          bucket bigint,
          PRIMARY KEY (conversation_id, bucket)
        ) WITH CLUSTERING ORDER BY (bucket DESC)`,
        // The fenced seq counter (ADR 0002): static last_seq and the dedupe rows share a partition, so
        // "UPDATE ... IF last_seq = n" plus "INSERT ... IF NOT EXISTS" per message is one atomic batch.
        // (Since written plainly by the owner, with a row of dedupe key '' that head reads stop at:
        // cassandra/sequencer.ts.)
        `CREATE TABLE IF NOT EXISTS ${ks}.conversation_sequencer (
          conversation_id text,
          last_seq bigint static,
          dedupe_key text,
          seq bigint,
          message_id text,
          PRIMARY KEY (conversation_id, dedupe_key)
        )`,
      ],
    },
    {
      version: 2,
      name: "conversations and membership",
      statements: [
        // The conversation row is the static part of its members partition. The member limit must hold
        // under concurrent adds: a CAS on a member_count kept in a separate conversations table cannot
        // also check which users are already members (two adds of the same user would both count it,
        // and a crash between the CAS and the member rows would leave the count off). With the count
        // static in the members partition, one conditional batch does "member_count = n + k IF
        // member_count = n" and "INSERT member IF NOT EXISTS" per new user, atomically (one partition).
        // So there is no separate `conversations` table: this partition is the conversation.
        `CREATE TABLE IF NOT EXISTS ${ks}.members_by_conversation (
          conversation_id text,
          kind text static,
          name text static,
          owner text static,
          open boolean static,
          created_at timestamp static,
          member_count int static,
          user_id text,
          joined_at timestamp,
          PRIMARY KEY (conversation_id, user_id)
        )`,
        // A user's conversations, newest first. A derived index written after the membership LWT: a
        // row may be missing for a moment (repaired by the next add/create of the user) or stale (its
        // member row is gone); readers check the member row, which is authoritative.
        `CREATE TABLE IF NOT EXISTS ${ks}.conversations_by_user (
          user_id text,
          created_at timestamp,
          conversation_id text,
          PRIMARY KEY (user_id, created_at, conversation_id)
        ) WITH CLUSTERING ORDER BY (created_at DESC, conversation_id ASC)`,
      ],
    },
    {
      version: 3,
      name: "per-user inbox",
      statements: [
        // Gap-free cursor assignment with the same fence as the sequencer: static head plus one row
        // per (conversation, seq) holding its cursor, which also makes append idempotent.
        `CREATE TABLE IF NOT EXISTS ${ks}.inbox_heads (
          user_id text,
          head bigint static,
          conversation_id text,
          seq bigint,
          cursor bigint,
          message_id text,
          PRIMARY KEY (user_id, conversation_id, seq)
        )`,
        // The stream a device syncs from, by cursor; rows are immutable once their cursor is assigned.
        `CREATE TABLE IF NOT EXISTS ${ks}.inbox_by_user (
          user_id text,
          bucket bigint,
          cursor bigint,
          conversation_id text,
          seq bigint,
          message_id text,
          PRIMARY KEY ((user_id, bucket), cursor)
        ) WITH CLUSTERING ORDER BY (cursor ASC)`,
      ],
    },
    {
      version: 4,
      name: "receipts, presence and devices",
      statements: [
        // Watermarks only rise, by LWT ("IF seq < ?"); one partition per (conversation, user) keeps
        // Paxos rounds of different readers of a big group from contending.
        `CREATE TABLE IF NOT EXISTS ${ks}.receipts (
          conversation_id text,
          user_id text,
          kind text,
          seq bigint,
          PRIMARY KEY ((conversation_id, user_id), kind)
        )`,
        // Written USING TIMESTAMP = last_active_at, so last-write-wins keeps the latest activity
        // whatever order the writes arrive in.
        `CREATE TABLE IF NOT EXISTS ${ks}.presence (
          user_id text PRIMARY KEY,
          last_active_at timestamp
        )`,
        // Push tokens: a re-registration replaces the device's row (last registration wins).
        `CREATE TABLE IF NOT EXISTS ${ks}.devices_by_user (
          user_id text,
          device_id text,
          provider text,
          push_token text,
          registered_at timestamp,
          PRIMARY KEY (user_id, device_id)
        )`,
      ],
    },
    {
      version: 5,
      name: "partition ownership epochs",
      statements: [
        // Who owns a partition of a stream (the sequencer's drafts partitions) and under which epoch
        // (ADR 0002): one Paxos round per claim, plain reads to check. Epochs are microsecond-scale
        // (max(previous + 1, now)), so they also serve as the write timestamps of the owner's rows.
        `CREATE TABLE IF NOT EXISTS ${ks}.partition_owners (
          stream text,
          partition int,
          epoch bigint,
          owner text,
          claimed_at timestamp,
          PRIMARY KEY ((stream, partition))
        )`,
      ],
    },
    {
      version: 6,
      name: "inbox heads written by the owner of the user's inbox partition",
      statements: [
        // The Kafka offset of the last inbox record applied to the user (ADR 0002): a successor that
        // re-reads a record at or below it knows its entries have their cursors already.
        `ALTER TABLE ${ks}.inbox_heads ADD applied_offset bigint static`,
      ],
    },
    {
      version: 7,
      name: "member roles and group policies",
      statements: [
        // A member's role when it is not "member" (admins; the owner is the static `owner`), and who
        // may post and add members (null: everyone). Changed, like the rest of the partition, with a
        // conditional write.
        `ALTER TABLE ${ks}.members_by_conversation ADD role text`,
        `ALTER TABLE ${ks}.members_by_conversation ADD post_policy text static`,
        `ALTER TABLE ${ks}.members_by_conversation ADD add_policy text static`,
      ],
    },
    {
      version: 8,
      name: "delivery model per conversation",
      statements: [
        // "pull" once a group outgrew groups.pullThreshold (ADR 0010); null: push. Set in the same
        // conditional batch as the member rows that made it grow.
        `ALTER TABLE ${ks}.members_by_conversation ADD delivery text static`,
      ],
    },
    {
      version: 9,
      name: "notification settings",
      statements: [
        // A user's muted conversations; a mute with an end expires by TTL shortly after it.
        `CREATE TABLE IF NOT EXISTS ${ks}.muted_conversations (
          user_id text,
          conversation_id text,
          until timestamp,
          PRIMARY KEY (user_id, conversation_id)
        )`,
        `CREATE TABLE IF NOT EXISTS ${ks}.do_not_disturb (
          user_id text PRIMARY KEY,
          start_minute int,
          end_minute int,
          time_zone text
        )`,
      ],
    },
    {
      version: 10,
      name: "push dead letters",
      statements: [
        // Push jobs that failed for good, by the hour they failed (a bounded partition per outage),
        // newest first, kept a week.
        `CREATE TABLE IF NOT EXISTS ${ks}.push_dead_letters (
          hour int,
          dead_at timestamp,
          job_id text,
          job text,
          error text,
          PRIMARY KEY (hour, dead_at, job_id)
        ) WITH CLUSTERING ORDER BY (dead_at DESC, job_id DESC)
          AND default_time_to_live = 604800`,
      ],
    },
    {
      version: 11,
      name: "device token owners",
      statements: [
        // Which registration holds a device token (APNs, FCM, Web Push): a token belongs to one.
        `CREATE TABLE IF NOT EXISTS ${ks}.device_token_owners (
          token_key text PRIMARY KEY,
          user_id text,
          device_id text
        )`,
      ],
    },
    {
      version: 12,
      name: "expired dedupe and inbox index rows purged 3 hours after they expire",
      statements: [
        // Their rows are only written with a TTL (the dedupe window) and their heads only overwritten:
        // nothing is ever deleted there, so no tombstone has to outlive a repair cycle (the default
        // 10 days), and every replica expires a row at the same time. An expired row is a tombstone
        // until a compaction after gc_grace_seconds; 3 hours is the default hint window, which
        // Cassandra caps at the table's gc_grace, so hints still cover a replica down that long.
        // A table option: applied online, and the same statement again changes nothing.
        `ALTER TABLE ${ks}.conversation_sequencer WITH gc_grace_seconds = 10800`,
        `ALTER TABLE ${ks}.inbox_heads WITH gc_grace_seconds = 10800`,
      ],
    },
    {
      version: 13,
      name: "id high-water marks",
      statements: [
        // The time each id worker of a role-all process issued ids up to, reserved ahead (one write
        // about every second while ids are issued): a restart starts above it (cassandra/id-high-water.ts).
        `CREATE TABLE IF NOT EXISTS ${ks}.id_high_water (
          worker_id int PRIMARY KEY,
          until_ms bigint
        )`,
      ],
    },
    {
      version: 14,
      name: "membership as of a seq",
      statements: [
        // ADR 0012: the seq after which a member counts, written by the sequencer when it meets the
        // change's announcement in the drafts partition: -1 until then (not yet a recipient); null on
        // rows written before this version (a member from the start).
        `ALTER TABLE ${ks}.members_by_conversation ADD since_seq bigint`,
        // Memberships that ended, one row per removal (a user may leave and come back many times),
        // with the seqs after which and up to which each counted (-1 until the sequencer met the
        // announcement): a message sequenced before a removal and handled again after a crash still
        // goes to the one removed, and one sent while a user was out does not. Only needed while such
        // a message may be handled again (seconds: the sequencer's uncommitted drafts); kept a week,
        // purged like the dedupe rows.
        `CREATE TABLE IF NOT EXISTS ${ks}.departures_by_conversation (
          conversation_id text,
          departed_at timestamp,
          user_id text,
          joined_at timestamp,
          since_seq bigint,
          until_seq bigint,
          PRIMARY KEY (conversation_id, departed_at, user_id)
        ) WITH default_time_to_live = 604800 AND gc_grace_seconds = 10800`,
      ],
    },
    {
      version: 15,
      name: "conversation versions",
      statements: [
        // One more with every change of the conversation, set in the change's conditional batch IF
        // it is still the version the change read (membership.ts); null on conversations stored
        // before this version and not changed since.
        `ALTER TABLE ${ks}.members_by_conversation ADD version bigint static`,
      ],
    },
    {
      version: 16,
      name: "inbox heads name the head before their batch",
      statements: [
        // The inbox owner writes a batch's stream rows and its users' heads in one round trip, in no
        // order (ADR 0002): a head found without its batch's rows gives way to the one before it.
        `ALTER TABLE ${ks}.inbox_heads ADD prev_head bigint static`,
        `ALTER TABLE ${ks}.inbox_heads ADD prev_applied_offset bigint static`,
      ],
    },
    {
      version: 17,
      name: "inbox heads name the log their applied offsets are positions in",
      statements: [
        // The inbox topic's name (ADR 0002): a keyspace restored beside fresh topics (another prefix)
        // keeps the old topics' applied offsets, which are no positions in the new ones.
        `ALTER TABLE ${ks}.inbox_heads ADD applied_log text static`,
      ],
    },
    {
      version: 18,
      name: "the inbox topic a keyspace served first",
      statements: [
        // Heads written before migration 17 name no topic: they are this one's (ADR 0002).
        `CREATE TABLE IF NOT EXISTS ${ks}.inbox_logs (
          id text PRIMARY KEY,
          topic text
        )`,
      ],
    },
  ];
}

/**
 * The id every process gives table `ks.table`: a name-based (version 3) UUID, as Cassandra names its
 * own system tables, of a text that no system table's name is.
 */
export function tableId(ks: string, table: string): string {
  const b = createHash("md5").update(`switchboard table ${ks}.${table}`).digest();
  b[6] = (b[6]! & 0x0f) | 0x30;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const hex = b.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * `statement` as run: a CREATE TABLE names its table id (`tableId`). Checksums stay over the
 * statements as written, so keyspaces migrated before ids were named are not refused.
 */
export function withTableId(statement: string): string {
  const created = /^\s*CREATE TABLE IF NOT EXISTS\s+([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)\s*\(/i.exec(
    statement,
  );
  if (!created) return statement;
  const id = `ID = '${tableId(created[1]!, created[2]!)}'`;
  return /\)\s*WITH\s/i.test(statement) ? `${statement} AND ${id}` : `${statement} WITH ${id}`;
}

function checksum(m: Migration): string {
  const normalised = m.statements.map((s) => s.replace(/\s+/g, " ").trim()).join(";\n");
  return createHash("sha256").update(normalised).digest("hex").slice(0, 16);
}

function replicationCql(r: Replication): string {
  const count = (n: number, what: string) => {
    if (!Number.isInteger(n) || n < 1 || n > 16)
      throw errors.invalid("INVALID_REPLICATION", `${what} must be an integer from 1 to 16, not ${n}`);
    return String(n);
  };
  if (r.class === "SimpleStrategy") {
    return `{'class': 'SimpleStrategy', 'replication_factor': ${count(r.replication_factor, "replication_factor")}}`;
  }
  const dcs = Object.entries(r.datacenters);
  if (dcs.length === 0)
    throw errors.invalid("INVALID_REPLICATION", "NetworkTopologyStrategy needs a datacenter");
  const parts = dcs.map(([dc, n]) => {
    if (!/^[A-Za-z0-9_.-]+$/.test(dc))
      throw errors.invalid("INVALID_REPLICATION", `datacenter name ${JSON.stringify(dc)} is not allowed`);
    return `'${dc}': ${count(n, `replicas in ${dc}`)}`;
  });
  return `{'class': 'NetworkTopologyStrategy', ${parts.join(", ")}}`;
}

/** The schema version this build's migrations bring a keyspace to (the newest migration's). */
export const SCHEMA_VERSION = Math.max(...migrations("switchboard").map((m) => m.version));

export interface MigrateOptions {
  keyspace: string;
  replication: Replication;
}

export interface MigrateResult {
  /** Versions applied by this call, in order. */
  applied: number[];
  /** The newest version now recorded. */
  version: number;
}

/** Creates the keyspace if needed and applies the pending migrations; safe to run again. */
export async function migrate(client: Client, options: MigrateOptions): Promise<MigrateResult> {
  const ks = options.keyspace;
  checkKeyspaceName(ks);
  // The driver waits (up to maxSchemaAgreementWaitSeconds) for the nodes to agree after each change.
  const ddl = async (what: string, query: string) => {
    try {
      await client.execute(query, [], { prepare: false });
    } catch (err) {
      throw storageError(`schema: ${what}`, err);
    }
  };
  const dml = { prepare: true, consistency: cassandra.types.consistencies.localQuorum, isIdempotent: true };

  await ddl(
    `create keyspace ${ks}`,
    `CREATE KEYSPACE IF NOT EXISTS ${ks} WITH replication = ${replicationCql(options.replication)}`,
  );
  await ddl(
    `${ks}.schema_migrations`,
    withTableId(`CREATE TABLE IF NOT EXISTS ${ks}.schema_migrations (
      version int PRIMARY KEY,
      name text,
      checksum text,
      applied_at timestamp
    )`),
  );

  const recorded = new Map<number, string>();
  try {
    const rows = await client.execute(`SELECT version, checksum FROM ${ks}.schema_migrations`, [], dml);
    for (const row of rows.rows) recorded.set(row.get("version") as number, row.get("checksum") as string);
  } catch (err) {
    throw storageError(`schema: read ${ks}.schema_migrations`, err);
  }

  const applied: number[] = [];
  let version = 0;
  for (const m of migrations(ks)) {
    const sum = checksum(m);
    const seen = recorded.get(m.version);
    if (seen !== undefined && seen !== sum) {
      throw errors.precondition(
        "SCHEMA_MISMATCH",
        `schema migration ${m.version} (${m.name}) was applied with checksum ${seen} but is now ${sum}: ` +
          "applied migrations must not change; add a new version instead",
      );
    }
    if (seen === undefined) {
      for (const statement of m.statements) {
        const table = /\b(?:EXISTS|ALTER TABLE)\s+(\S+)/.exec(statement)?.[1] ?? "statement";
        try {
          await ddl(`migration ${m.version}: ${table}`, withTableId(statement));
        } catch (err) {
          // ALTER TABLE ... ADD has no IF NOT EXISTS here: a column added by a cut-off run is done.
          if (
            !(
              /^\s*ALTER TABLE/i.test(statement) &&
              /already exists|conflicts with an existing column/i.test(String(err))
            )
          )
            throw err;
        }
      }
      try {
        await client.execute(
          `INSERT INTO ${ks}.schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)`,
          [m.version, m.name, sum, new Date()],
          dml,
        );
      } catch (err) {
        throw storageError(`schema: record migration ${m.version}`, err);
      }
      applied.push(m.version);
    }
    version = m.version;
  }

  if (applied.length > 0) {
    // Only after changes: the driver counts every row of system.peers, down nodes included, whose
    // schema version stays behind until they are back, so a check on every run would refuse every
    // start while one node is down for maintenance. (A retry after a failed check applies nothing and
    // so does not check again: the nodes converge by themselves.)
    // Untyped in the driver's declarations, documented in its API: a one-time check of the live nodes.
    const metadata = client.metadata as unknown as { checkSchemaAgreement(): Promise<boolean> };
    if (!(await metadata.checkSchemaAgreement()))
      throw errors.unavailable(
        "STORAGE_UNAVAILABLE",
        `schema: nodes do not agree on ${ks}'s schema yet; retry`,
      );
  }
  return { applied, version };
}

/**
 * Checks, without changing anything, that every migration of this build is applied (with its
 * checksum): processes that do not provision (split roles; the operator provisions) refuse to run
 * against a keyspace that is missing, older or diverged, with a message that says what to do.
 */
export async function verifySchema(client: Client, ks: string): Promise<number> {
  checkKeyspaceName(ks);
  let rows: Array<{ get(name: string): unknown }>;
  try {
    const result = await client.execute(`SELECT version, checksum FROM ${ks}.schema_migrations`, [], {
      prepare: false,
      consistency: cassandra.types.consistencies.localQuorum,
    });
    rows = result.rows;
  } catch (err) {
    const text = String((err as Error).message ?? err);
    if (/unconfigured table|does not exist|Keyspace .* not exist/i.test(text))
      throw errors.precondition(
        "NOT_PROVISIONED",
        `keyspace ${ks} has no schema: provision it first (the operator does; or run \`switchboard provision\`)`,
      );
    throw storageError(`schema: read ${ks}.schema_migrations`, err);
  }
  const recorded = new Map(rows.map((r) => [r.get("version") as number, r.get("checksum") as string]));
  let version = 0;
  for (const m of migrations(ks)) {
    const seen = recorded.get(m.version);
    if (seen === undefined)
      throw errors.precondition(
        "NOT_PROVISIONED",
        `keyspace ${ks} lacks migration ${m.version} (${m.name}): provision it first (the operator does; or run \`switchboard provision\`)`,
      );
    if (seen !== checksum(m))
      throw errors.precondition(
        "SCHEMA_MISMATCH",
        `schema migration ${m.version} (${m.name}) in ${ks} differs from this build's`,
      );
    version = m.version;
  }
  return version;
}
