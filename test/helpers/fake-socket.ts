/**
 * A `ws` socket as a gateway Connection uses it, for tests that drive one without a network: frames
 * go in as "message" events, frames out are decoded and recorded.
 */
import { EventEmitter } from "node:events";
import { fromBinary, fromJsonString } from "@bufbuild/protobuf";
import { type ServerFrame, ServerFrameSchema } from "../../gen/switchboard/client/v1/client_pb.js";

export class FakeSocket extends EventEmitter {
  readonly sent: ServerFrame[] = [];
  /** The encoding of each sent frame. */
  readonly encodings: Array<"json" | "binary"> = [];
  closedWith: number | undefined;
  bufferedAmount = 0;

  send(data: string | Uint8Array): void {
    const binary = typeof data !== "string";
    this.sent.push(binary ? fromBinary(ServerFrameSchema, data) : fromJsonString(ServerFrameSchema, data));
    this.encodings.push(binary ? "binary" : "json");
  }

  close(code: number): void {
    this.closedWith = code;
  }

  /** A client frame, as JSON. */
  frame(json: unknown): void {
    this.emit("message", Buffer.from(JSON.stringify(json)), false);
  }

  /** The reply to request `id`, if it came. */
  reply(id: number): ServerFrame | undefined {
    return this.sent.find((f) => f.replyTo === id);
  }

  /** The presence events received, as "user:online|offline". */
  presence(): string[] {
    return this.sent.flatMap((f) =>
      f.kind.case === "presence" && f.kind.value.status
        ? [`${f.kind.value.status.userId}:${f.kind.value.status.online ? "online" : "offline"}`]
        : [],
    );
  }
}
