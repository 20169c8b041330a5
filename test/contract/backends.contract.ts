/**
 * The backend contract (docs/design.md §3, §4 and §6): one suite every implementation of
 * `Backends` (internal/backends/types.ts) must pass, embedded (LMDB) and distributed (Kafka +
 * Cassandra) alike. A backend's test file calls `describeBackendContract(name, open)`.
 *
 * Isolation. Every test calls `open` once with a fresh `namespace` ([a-z][a-z0-9_]*, at most 32
 * characters: valid as a Kafka topic prefix, a Cassandra keyspace name or a directory name) and works
 * only on that instance (and on what `reopen` returns). Every id the suite uses is unique to the
 * test (nearly all contain the namespace), and the conversation ids it appends to the log, gateway
 * ids and consumer group names start with it, so an implementation may share expensive resources
 * between tests (one keyspace, one broker); the suite ignores log entries and routing events of other
 * namespaces. What replays a whole topic (the
 * routing table, a new consumer group) is still best given its own topic per namespace.
 *
 * Asynchrony. Nothing assumes that a consumer or a routing subscriber is called synchronously:
 * deliveries are awaited with `eventually` (bounded by `eventuallyMs`). To check that something was
 * *not* delivered, a test appends a sentinel to the same conversation and waits for it: per
 * conversation order means everything before it has been delivered by then.
 */
import { describe } from "vitest";
import { durabilityContract } from "./durability.contract.js";
import { type ContractOptions, contractKit, type OpenBackends } from "./harness.js";
import { inboxContract } from "./inbox.contract.js";
import { logContract } from "./log.contract.js";
import { membersAmongContract } from "./members-among.contract.js";
import { membershipContract } from "./membership.contract.js";
import { messageStoreContract } from "./messages.contract.js";
import { smallStoresContract } from "./small-stores.contract.js";

export type {
  ContractContext,
  ContractOptions,
  KnownFailure,
  OpenBackends,
  OpenedBackends,
} from "./harness.js";

export function describeBackendContract(
  name: string,
  open: OpenBackends,
  options: ContractOptions = {},
): void {
  const kit = contractKit(name, open, options);
  describe(`backend contract: ${name}`, () => {
    logContract(kit);
    durabilityContract(kit);
    messageStoreContract(kit);
    membershipContract(kit);
    membersAmongContract(kit);
    inboxContract(kit);
    smallStoresContract(kit);
  });
}
