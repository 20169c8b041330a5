import type { EachBatchPayload, TopicPartitionOffset } from "kafkajs";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../lib/log.js";
import { batchArrived, ConsumerLag, commitBatch, PeriodicCommits } from "./consumers.js";

/** A consumer's commitOffsets that records each call and fails while `failing` is set. */
function fakeConsumer() {
  const calls: TopicPartitionOffset[][] = [];
  const c = {
    failing: false,
    calls,
    commitOffsets: async (offsets: TopicPartitionOffset[]) => {
      calls.push(offsets.map((o) => ({ ...o })));
      if (c.failing) throw new Error("The group is rebalancing");
    },
  };
  return c;
}

const log = createLogger({ test: "periodic-commits" });
const byPartition = (offsets: TopicPartitionOffset[]) =>
  Object.fromEntries(offsets.map((o) => [`${o.topic}/${o.partition}`, o.offset]));

describe("PeriodicCommits", () => {
  it("commits only the latest resolved offset of each partition, in one request, once", async () => {
    const consumer = fakeConsumer();
    const commits = new PeriodicCommits(consumer, log, 60_000);
    commits.resolved("drafts", 0, "5");
    commits.resolved("drafts", 1, "3");
    commits.resolved("drafts", 0, "9");
    await commits.flush();
    expect(consumer.calls).toHaveLength(1);
    expect(byPartition(consumer.calls[0]!)).toEqual({ "drafts/0": "9", "drafts/1": "3" });
    await commits.flush(); // nothing new resolved: no request
    expect(consumer.calls).toHaveLength(1);
  });

  it("retries a failed commit with the next one, unless a newer offset superseded it", async () => {
    const consumer = fakeConsumer();
    const commits = new PeriodicCommits(consumer, log, 60_000);
    commits.resolved("drafts", 0, "5");
    commits.resolved("drafts", 1, "7");
    consumer.failing = true;
    await commits.flush();
    consumer.failing = false;
    commits.resolved("drafts", 0, "6");
    await commits.flush();
    expect(byPartition(consumer.calls[1]!)).toEqual({ "drafts/0": "6", "drafts/1": "7" });
  });

  it("drops what an old generation resolved, and commits what is resolved on close", async () => {
    const consumer = fakeConsumer();
    const commits = new PeriodicCommits(consumer, log, 60_000);
    commits.resolved("inbox", 2, "40");
    commits.reset();
    commits.resolved("inbox", 3, "12");
    await commits.close();
    expect(consumer.calls.map(byPartition)).toEqual([{ "inbox/3": "12" }]);
  });

  it("drops a failed commit's offsets when a new generation began while it was in flight", async () => {
    const consumer = fakeConsumer();
    const commits = new PeriodicCommits(consumer, log, 60_000);
    commits.resolved("drafts", 0, "5");
    consumer.failing = true;
    const inFlight = commits.flush(); // generation 1's offsets; the rebalance fails the commit
    commits.reset(); // the new generation joins before the failure is known
    await inFlight;
    consumer.failing = false;
    await commits.flush();
    expect(consumer.calls.map(byPartition)).toEqual([{ "drafts/0": "5" }]); // not committed again
    commits.resolved("drafts", 1, "8"); // what the new generation resolves is committed
    await commits.flush();
    expect(consumer.calls.map(byPartition)).toEqual([{ "drafts/0": "5" }, { "drafts/1": "8" }]);
  });

  it("commits on its own once started", async () => {
    const consumer = fakeConsumer();
    const commits = new PeriodicCommits(consumer, log, 20);
    commits.start();
    commits.resolved("drafts", 0, "1");
    await new Promise((r) => setTimeout(r, 120));
    expect(consumer.calls.map(byPartition)).toEqual([{ "drafts/0": "1" }]);
    await commits.close();
  });
});

describe("consumer lag", () => {
  it("counts a batch from its arrival until it is committed, so a stuck batch shows as lag", async () => {
    const lag = new ConsumerLag("sequencer");
    const batch = {
      topic: "drafts",
      partition: 2,
      highWatermark: "120",
      messages: [{ offset: "100" }, { offset: "109" }],
    } as unknown as EachBatchPayload["batch"];
    batchArrived({ batch }, lag);
    expect([...lag.entries()]).toEqual([{ group: "sequencer", partition: 2, records: 20 }]);
    // Still 20 while its handler fails or hangs; once committed, what is past it.
    await commitBatch(
      {
        batch,
        resolveOffset: () => undefined,
        commitOffsetsIfNecessary: async () => undefined,
        heartbeat: async () => undefined,
        isStale: () => false,
      } as unknown as EachBatchPayload,
      lag,
    );
    expect([...lag.entries()]).toEqual([{ group: "sequencer", partition: 2, records: 10 }]);
  });
});
