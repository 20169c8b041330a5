/**
 * The order of one connection's sends to one conversation, across a refused send.
 *
 * Pipelined sends are appended in the order they arrived, so they get increasing seqs. A send
 * refused for a reason worth retrying (the id service or Kafka briefly unreachable, a rate limit)
 * would break that: the sends behind it would still be appended, and its resend would come after
 * them. So a refusal opens a gap for the conversation on this connection: its later sends there are
 * refused too (`PREVIOUS_SEND_FAILED`, retryable) until the refused send comes again, which closes
 * the gap, and a client that resends in the order it first sent keeps its order. The sends in flight
 * when the client learns of the refusal are the ones this catches; a gap that sees no resend for
 * `lifetimeMs` (a client that gave up on the send) closes by itself.
 *
 * Refusals do not come in send order: a send's append can fail (Kafka) after a later send was
 * already refused (a rate limit, the id service). So each send carries its place in the connection's
 * sends, and the gap names the earliest refused one: that is the one the client must send first.
 *
 * Not every refusal opens one: a final one (a client error, NOT_MEMBER) is never resent, and
 * `SEQUENCE_TIMEOUT` comes after the message reached the log in its place (its resend is answered
 * with the original ack).
 */
import { Code, errors, SwitchboardError } from "../lib/errors.js";

interface Gap {
  clientMsgId: string;
  /** Its place among the connection's sends (their order of arrival). */
  order: number;
  openedAtMs: number;
}

/**
 * Whether refusing a send with `err` leaves a gap: the client is told to send it again later
 * (docs/protocol.md §6; the SDK's isRetryableSendError retries exactly these).
 */
export function leavesGap(err: unknown): boolean {
  if (!(err instanceof SwitchboardError)) return true; // INTERNAL to the client: resend
  if (err.reason === "SEQUENCE_TIMEOUT") return false;
  switch (err.code) {
    case Code.UNAVAILABLE:
    case Code.INTERNAL:
    case Code.UNKNOWN:
    case Code.DEADLINE_EXCEEDED:
    case Code.CANCELLED:
    case Code.ABORTED:
      return true;
    case Code.RESOURCE_EXHAUSTED:
      return err.reason === "RATE_LIMITED";
    default:
      return false;
  }
}

export class SendGaps {
  /** Open gaps by conversation, oldest first. */
  private readonly gaps = new Map<string, Gap>();

  constructor(
    private readonly lifetimeMs: number,
    /** Conversations with a gap at once, at most; past it the oldest gap is forgotten. */
    private readonly max = 1_000,
  ) {}

  /**
   * Lets the `order`-th send, to `conversation`, through, or throws `PREVIOUS_SEND_FAILED` while an
   * earlier refused send there has not come again. That send itself passes, and closes the gap, and
   * so do sends that arrived before it.
   */
  pass(conversation: string, clientMsgId: string, order: number, now = Date.now()): void {
    const gap = this.gaps.get(conversation);
    if (!gap || order < gap.order) return;
    if (gap.clientMsgId === clientMsgId || now - gap.openedAtMs >= this.lifetimeMs) {
      this.gaps.delete(conversation);
      return;
    }
    throw errors.aborted(
      "PREVIOUS_SEND_FAILED",
      `an earlier send to ${conversation} on this connection was refused (clientMsgId ${gap.clientMsgId}); send it again first, then this one`,
    );
  }

  /**
   * The send that arrived `order`-th on the connection, to `conversation`, was refused with `err`: a
   * retryable refusal opens a gap, or moves an open one back to this send if it came earlier.
   */
  refused(conversation: string, clientMsgId: string, err: unknown, order: number, now = Date.now()): void {
    if (!leavesGap(err)) return;
    const open = this.gaps.get(conversation);
    if (open && now - open.openedAtMs < this.lifetimeMs && open.order <= order) return;
    this.gaps.delete(conversation);
    if (this.gaps.size >= this.max) this.gaps.delete(this.gaps.keys().next().value!);
    this.gaps.set(conversation, { clientMsgId, order, openedAtMs: now });
  }
}
