/**
 * The backend contract against the embedded (LMDB) backend: one fresh temp directory per test,
 * reopened on the same directory for the durability tests, removed afterwards.
 *
 * The directories live on tmpfs (/dev/shm) where there is one: every acked write is an fsync, which
 * costs 10-50 ms on this machine's disk and is not something the contract can observe (no test
 * crashes the machine), so a real disk would only make the suite several times slower.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EmbeddedBackends } from "../../internal/backends/embedded/index.js";
import { describeBackendContract } from "./backends.contract.js";

const scratch = existsSync("/dev/shm") ? "/dev/shm" : tmpdir();

describeBackendContract(
  "embedded",
  async ({ namespace }) => {
    const dataDir = await mkdtemp(join(scratch, `switchboard-contract-${namespace}-`));
    const options = {
      dataDir,
      onFatal: (err: unknown) => console.error(`embedded backend (${dataDir}) failed a commit`, err),
    };
    return {
      backends: new EmbeddedBackends(options),
      reopen: async () => new EmbeddedBackends(options),
      dispose: () => rm(dataDir, { recursive: true, force: true }),
    };
  },
  {
    knownFailures: [
      // Bug: EmbeddedInbox.append (internal/backends/embedded/index.ts, lines 477-481) returns the
      // cursor of an entry another append still has in flight without waiting for that commit, so
      // it resolves before the entry is durable or readable (head() and read() do not show it yet).
      // EmbeddedLog.append waits for its in-flight original (line 190); the inbox should too.
      "inbox-duplicate-of-in-flight-entry-resolves-before-commit",
      // Bug: EmbeddedDevices.list (same file, line 624) scans [userId, ""] .. [userId, "\uffff"];
      // UTF-8 keys of device ids starting at U+10000 or above sort after the end bound, so such a
      // device is stored but never listed: never notified, never shown, and not counted against
      // DEVICES_PER_USER_MAX in internal/push/service.ts. (members() and conversationsOf() use the
      // same bound, lines 427 and 434, but the ids they see are ASCII by validation.)
      "devices-list-omits-non-bmp-device-ids",
    ],
  },
);
