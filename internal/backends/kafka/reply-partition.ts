/**
 * Replies per process (ADR 0002). A process that appends drafts names, in each draft's headers, the
 * partition of `<prefix>replies-by-process` it reads; the sequencer answers there. So a process reads
 * its own senders' replies and not every gateway's: with the shared `<prefix>replies` topic (answered
 * by conversation key) every appending process read every reply, which grows with the number of
 * gateways times the message rate.
 *
 * kafkajs has no manual partition assignment. Each process follows replies with a consumer group of
 * its own, so an assigner that hands that group's member the one partition does the same.
 */
import { AssignerProtocol, type PartitionAssigner } from "kafkajs";

/** The draft header that names the replies-by-process partition its sender's process reads. */
export const REPLY_PARTITION_HEADER = "reply-partition";

const ASSIGNER_NAME = "SwitchboardOnePartition";

/** An assigner that gives each member of the group (a process's own group: one) `partition` of `topic`. */
export function onePartitionAssigner(topic: string, partition: number): PartitionAssigner {
  return () => ({
    name: ASSIGNER_NAME,
    version: 0,
    async assign({ members }) {
      return members.map(({ memberId }) => ({
        memberId,
        memberAssignment: AssignerProtocol.MemberAssignment.encode({
          version: 0,
          assignment: { [topic]: [partition] },
          userData: Buffer.alloc(0),
        }),
      }));
    },
    protocol({ topics }) {
      return {
        name: ASSIGNER_NAME,
        metadata: AssignerProtocol.MemberMetadata.encode({ version: 0, topics, userData: Buffer.alloc(0) }),
      };
    },
  });
}

/** The partition a draft's sender reads its reply on, if the draft names one. */
export function replyPartitionOf(headers: Record<string, unknown> | undefined): number | undefined {
  const raw = headers?.[REPLY_PARTITION_HEADER];
  if (raw === undefined) return undefined;
  const n = Number(String(raw));
  return Number.isInteger(n) && n >= 0 ? n : undefined;
}
