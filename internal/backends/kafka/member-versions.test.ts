/** Members announcing what they can do in their group metadata (ADR 0002, the inbox owner's write). */
import { AssignerProtocol, type Cluster, type Logger, PartitionAssigners } from "kafkajs";
import { describe, expect, it } from "vitest";
import { announcingRoundRobin, everyMemberAnnounces } from "./member-versions.js";

const config = { cluster: {} as Cluster, groupId: "g", logger: {} as Logger };
const CAPABILITY = "switchboard.test/checked";

describe("member versions", () => {
  it("announce under kafkajs's round-robin protocol name, so that members of a version before share the group", () => {
    const announcing = announcingRoundRobin(CAPABILITY)(config);
    const plain = PartitionAssigners.roundRobin(config);
    const state = announcing.protocol({ topics: ["t"] });
    expect([announcing.name, state.name]).toEqual([plain.name, plain.name]);
    const metadata = AssignerProtocol.MemberMetadata.decode(state.metadata);
    expect(metadata?.topics).toEqual(["t"]);
    expect(metadata?.userData.toString("utf8")).toBe(CAPABILITY);
  });

  it("count as all announcing only when every member did: not with one of a version before, nor with none", () => {
    const announcing = {
      memberMetadata: announcingRoundRobin(CAPABILITY)(config).protocol({ topics: ["t"] }).metadata,
    };
    const older = {
      memberMetadata: PartitionAssigners.roundRobin(config).protocol({ topics: ["t"] }).metadata,
    };
    const other = {
      memberMetadata: announcingRoundRobin("switchboard.test/else")(config).protocol({ topics: ["t"] })
        .metadata,
    };
    expect(everyMemberAnnounces([announcing, announcing], CAPABILITY)).toBe(true);
    expect(everyMemberAnnounces([announcing, older], CAPABILITY)).toBe(false);
    expect(everyMemberAnnounces([announcing, other], CAPABILITY)).toBe(false);
    expect(everyMemberAnnounces([announcing, { memberMetadata: Buffer.alloc(0) }], CAPABILITY)).toBe(false);
    expect(everyMemberAnnounces([], CAPABILITY)).toBe(false);
  });
});
