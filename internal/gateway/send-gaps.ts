/**
 * The order of one connection's sends to one conversation, across a refused send.
 *
 * Pipelined sends are appended in the order they arrived, so they get increasing seqs. A send
 * refused for a reason worth retrying (the id service or Kafka briefly unreachable, a rate limit)
 * would break that: the sends behind it would still be appended, and its resend would come after
 * them. So a refusal opens a gap for the conversation on this connection: its later sends there are
 * refused too (`PREVIOUS_SEND_FAILED`, retryable) until the refused sends come again, in the order
 * they first arrived, which closes the gap; a client that resends in the order it first sent keeps
 * its order. The sends in flight when the client learns of the refusal are the ones this catches; a
 * gap that sees no resend for `lifetimeMs` (a client that gave up on the send) closes by itself.
 *
 * Refusals do not come in send order: a send's append can fail (Kafka) after a later send was
 * already refused (a rate limit, the id service). So each send carries its place in the connection's
 * sends, and the gap keeps every refused send by that place, the earliest first: that is the one the
 * client must send first. The sends refused because of the gap (`PREVIOUS_SEND_FAILED`) join it, so
 * that a send made after the first one came again cannot overtake them. A refused send keeps its
 * place until it is stored, past the gap that held it: its resend, refused again in a later gap
 * (Kafka away for longer than one resend), goes back to where it first arrived, not behind sends
 * that arrived after it and were resent before it was.
 *
 * Not every refusal opens one: a final one (a client error, NOT_MEMBER) is never resent, and
 * `SEQUENCE_TIMEOUT` comes after the message reached the log in its place (its resend is answered
 * with the original ack).
 */
import { dropOldest } from "../lib/drop-oldest.js";
import { Code, errors, forClients, SwitchboardError } from "../lib/errors.js";

interface Refused {
  clientMsgId: string;
  /** Its place among the connection's sends (their order of arrival). */
  order: number;
}

interface Gap {
  /** The sends refused while the gap is open, by `order`: they must come again in this order. */
  refused: Refused[];
  /** When the gap opened or its first send last came again: it closes `lifetimeMs` after. */
  sinceMs: number;
}

/** Refused sends a gap remembers at most (past it, a refused send is only refused again when it comes back). */
const REFUSED_PER_GAP_MAX = 256;
/** Places of refused sends not yet stored a connection keeps at most (the oldest are forgotten). */
const PLACES_MAX = 4_096;

const placeKey = (conversation: string, clientMsgId: string) => `${conversation}\n${clientMsgId}`;

/**
 * Whether refusing a send with `err` leaves a gap: the client is told to send it again later
 * (docs/protocol.md §6; the SDK's isRetryableSendError retries exactly these).
 */
export function leavesGap(error: unknown): boolean {
  if (!(error instanceof SwitchboardError)) return true; // INTERNAL to the client: resend
  const err = forClients(error); // what the client is told decides what it does
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
      // A limit that waiting lifts (a rate limit, the embedded disk's STORAGE_FULL) carries its wait.
      return err.reason === "RATE_LIMITED" || err.retryAfterMs > 0;
    default:
      return false;
  }
}

export class SendGaps {
  /** Open gaps by conversation, oldest first. */
  private readonly gaps = new Map<string, Gap>();
  /**
   * Where each refused send first arrived (its `order`), by conversation and clientMsgId, until it
   * is stored (settled): a resend keeps the place of the send it repeats, in any gap.
   */
  private readonly places = new Map<string, number>();

  constructor(
    private readonly lifetimeMs: number,
    /** Conversations with a gap at once, at most; past it the oldest gap is forgotten. */
    private readonly max = 1_000,
  ) {}

  /**
   * Lets the `order`-th send, to `conversation`, through, or throws `PREVIOUS_SEND_FAILED` while a
   * send refused there earlier has not come again. The first of those passes when it comes again (the
   * gap then waits for the next one), and so do sends that arrived before it. `now` is when this send
   * arrived: the gap's lifetime counts up to its arrival, however long it then waited for its turn.
   */
  pass(conversation: string, clientMsgId: string, order: number, now = Date.now()): void {
    const gap = this.gaps.get(conversation);
    if (!gap) return;
    if (now - gap.sinceMs >= this.lifetimeMs) {
      this.gaps.delete(conversation); // the client gave up on it
      return;
    }
    const first = gap.refused[0]!;
    if ((this.places.get(placeKey(conversation, clientMsgId)) ?? order) < first.order) return;
    if (first.clientMsgId === clientMsgId) {
      gap.refused.shift();
      gap.sinceMs = now;
      if (gap.refused.length === 0) this.gaps.delete(conversation);
      return;
    }
    throw errors.aborted(
      "PREVIOUS_SEND_FAILED",
      `an earlier send to ${conversation} on this connection was refused (clientMsgId ${first.clientMsgId}); send it again first, then this one`,
    );
  }

  /**
   * The send that arrived `order`-th on the connection, to `conversation`, was refused with `err`: a
   * retryable refusal opens a gap, or joins the open one in its place by arrival. A send refused with
   * `PREVIOUS_SEND_FAILED` joins it too: when the send it waited for comes again, the sends refused
   * behind that one must still come before anything sent after them.
   */
  refused(conversation: string, clientMsgId: string, err: unknown, order: number, now = Date.now()): void {
    if (!leavesGap(err)) return;
    // A resend refused again goes back to the place of the send it repeats.
    const key = placeKey(conversation, clientMsgId);
    order = this.places.get(key) ?? order;
    if (!this.places.has(key)) {
      if (this.places.size >= PLACES_MAX) dropOldest(this.places);
      this.places.set(key, order);
    }
    let gap = this.gaps.get(conversation);
    if (gap && now - gap.sinceMs >= this.lifetimeMs) {
      this.gaps.delete(conversation);
      gap = undefined;
    }
    if (!gap) {
      if (this.gaps.size >= this.max) dropOldest(this.gaps);
      this.gaps.set(conversation, { refused: [{ clientMsgId, order }], sinceMs: now });
      return;
    }
    const { refused } = gap;
    if (refused.length >= REFUSED_PER_GAP_MAX || refused.some((r) => r.clientMsgId === clientMsgId)) return;
    // Refusals do not come in send order (above): keep them in the order the sends arrived.
    let at = refused.length;
    while (at > 0 && refused[at - 1]!.order > order) at--;
    refused.splice(at, 0, { clientMsgId, order });
  }

  /** The send is stored (acknowledged): its place is no longer needed. */
  settled(conversation: string, clientMsgId: string): void {
    if (this.places.size > 0) this.places.delete(placeKey(conversation, clientMsgId));
  }
}
