/**
 * What each member of a consumer group can do, announced in its group metadata (ADR 0002): the user
 * data of kafkajs's round-robin protocol, which members of every version share, so that members of an
 * older version (which announce nothing) and of a newer one still form one group during a rolling
 * upgrade. A member reads the others' announcements when it joins a generation, and keeps to what
 * they all can do until the group holds none of the older ones.
 */
import { AssignerProtocol, type PartitionAssigner, PartitionAssigners } from "kafkajs";

/** The round-robin assigner, announcing `capability` in this member's metadata. */
export function announcingRoundRobin(capability: string): PartitionAssigner {
  return (config) => {
    const roundRobin = PartitionAssigners.roundRobin(config);
    return {
      name: roundRobin.name,
      version: roundRobin.version,
      assign: (group) => roundRobin.assign(group),
      protocol: ({ topics }) => ({
        name: roundRobin.name,
        metadata: AssignerProtocol.MemberMetadata.encode({
          version: roundRobin.version,
          topics,
          userData: Buffer.from(capability, "utf8"),
        }),
      }),
    };
  };
}

/** Whether every member of the group (as `describeGroup` lists them) announced `capability`. */
export function everyMemberAnnounces(
  members: ReadonlyArray<{ memberMetadata: Buffer }>,
  capability: string,
): boolean {
  return (
    members.length > 0 &&
    members.every((m) => {
      const metadata =
        m.memberMetadata.length > 0 ? AssignerProtocol.MemberMetadata.decode(m.memberMetadata) : null;
      return metadata?.userData?.toString("utf8") === capability;
    })
  );
}
