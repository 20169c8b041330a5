/** The replies-by-process assigner and header (ADR 0002): a process's own group reads one partition. */
import { AssignerProtocol, type Cluster, type Logger } from "kafkajs";
import { describe, expect, it } from "vitest";
import { onePartitionAssigner, REPLY_PARTITION_HEADER, replyPartitionOf } from "./reply-partition.js";

const assigner = (topic: string, partition: number) =>
  onePartitionAssigner(topic, partition)({ cluster: {} as Cluster, groupId: "g", logger: {} as Logger });

describe("replies by process", () => {
  it("assigns the group's member only the chosen partition of the topic", async () => {
    const a = assigner("t.replies-by-process", 5);
    const [only, ...rest] = await a.assign({
      members: [{ memberId: "m-1", memberMetadata: Buffer.alloc(0) }],
      topics: ["t.replies-by-process"],
    });
    expect(rest).toEqual([]);
    expect(only!.memberId).toBe("m-1");
    expect(AssignerProtocol.MemberAssignment.decode(only!.memberAssignment)?.assignment).toEqual({
      "t.replies-by-process": [5],
    });
  });

  it("announces the subscription under its own protocol name", () => {
    const a = assigner("t", 0);
    const state = a.protocol({ topics: ["t"] });
    expect(state.name).toBe(a.name);
    expect(AssignerProtocol.MemberMetadata.decode(state.metadata)?.topics).toEqual(["t"]);
  });

  it("reads the partition a draft names, and none from a draft of the version before or a bad header", () => {
    expect(replyPartitionOf({ [REPLY_PARTITION_HEADER]: Buffer.from("7") })).toBe(7);
    expect(replyPartitionOf({ [REPLY_PARTITION_HEADER]: "0" })).toBe(0);
    expect(replyPartitionOf({ traceparent: Buffer.from("00-x") })).toBeUndefined();
    expect(replyPartitionOf(undefined)).toBeUndefined();
    expect(replyPartitionOf({ [REPLY_PARTITION_HEADER]: Buffer.from("-1") })).toBeUndefined();
    expect(replyPartitionOf({ [REPLY_PARTITION_HEADER]: Buffer.from("x") })).toBeUndefined();
  });
});
