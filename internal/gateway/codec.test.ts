import { create, fromBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { ServerFrameSchema } from "../../gen/switchboard/client/v1/client_pb.js";
import { MessageSchema } from "../../gen/switchboard/common/v1/common_pb.js";
import { encodeServerFrame, MessageEventFrames } from "./codec.js";

const messages = [
  { body: "hi", seq: 1n },
  { body: "", seq: 127n },
  { body: "x".repeat(100), seq: 128n },
  { body: "é👋 ".repeat(50), seq: 300n },
  { body: "y".repeat(20_000), seq: 2n ** 40n },
].map(({ body, seq }) =>
  create(MessageSchema, {
    conversationId: "dm:alice~bob",
    seq,
    messageId: "382805782816620544",
    sender: "alice",
    clientMsgId: "c1",
    body,
    createdAtMs: 1795335210811n,
  }),
);
const cursors = [0n, 1n, 127n, 128n, 16_383n, 16_384n, 2n ** 35n, BigInt(Number.MAX_SAFE_INTEGER)];

describe("MessageEventFrames", () => {
  it("produces exactly the bytes and text encodeServerFrame does, for every cursor", () => {
    for (const message of messages) {
      const frames = new MessageEventFrames(message);
      for (const cursor of cursors)
        for (const encoding of ["binary", "json"] as const) {
          const expected = encodeServerFrame(
            { kind: { case: "message", value: { message, cursor } } },
            encoding,
          );
          expect(frames.frame(cursor, encoding), `${encoding} cursor ${cursor}`).toEqual(expected);
        }
    }
  });

  it("decodes back to the message and the recipient's cursor", () => {
    const frames = new MessageEventFrames(messages[3]!);
    const decoded = fromBinary(ServerFrameSchema, frames.frame(70_000n, "binary") as Uint8Array);
    expect(decoded.kind.case).toBe("message");
    const event = decoded.kind.value as { message: unknown; cursor: bigint };
    expect(event.cursor).toBe(70_000n);
    expect(event.message).toEqual(messages[3]);
  });
});
