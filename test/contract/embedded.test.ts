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
    knownFailures: [],
  },
);
