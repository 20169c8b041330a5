/**
 * The standard gRPC health service (grpc.health.v1.Health) of every process's gRPC server, in step
 * with /readyz: SERVING while the process is ready, NOT_SERVING while it starts, while its storage
 * is unreachable and while it stops. "" names the whole server; every service the server serves
 * (Health included) has the process's status, since readiness is the process's; a service the
 * server declared but has not added yet (its role is starting: its methods answer UNAVAILABLE) is
 * NOT_SERVING; any other name is NOT_FOUND (Check) or SERVICE_UNKNOWN (Watch), as the protocol says.
 */
import type { DescService } from "@bufbuild/protobuf";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../../gen/grpc/health/v1/health_pb.js";
import { Code, SwitchboardError } from "../lib/errors.js";
import type { ServiceImpl } from "../lib/rpc.js";

export { Health };

/**
 * Readiness is computed from checks (storage clients, phase), not pushed, so open Watch streams
 * compare it this often; the runtime also wakes them at once when its phase changes.
 */
const WATCH_POLL_MS = 1_000;

export class HealthService {
  /** One wake-up per waiting Watch stream. */
  private readonly waiting = new Set<() => void>();
  private poll: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly o: {
      /** The process is ready (the same answer as /readyz). */
      serving: () => boolean;
      /** The services the server serves now (they are added while the process starts). */
      services: () => readonly DescService[];
      /** Names of the services declared but not added yet (rpc.ts, addStartingService). */
      starting?: () => readonly string[];
    },
  ) {}

  /** The status of `service` ("" for the server), or undefined for a service the server lacks. */
  status(service: string): ServingStatus | undefined {
    if (service !== "" && !this.o.services().some((s) => s.typeName === service))
      return this.o.starting?.().includes(service) ? ServingStatus.NOT_SERVING : undefined;
    return !this.closed && this.o.serving() ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
  }

  /** Makes every Watch stream compare its last answer with the current status now. */
  changed(): void {
    for (const wake of [...this.waiting]) wake();
  }

  /**
   * Answers NOT_SERVING to every Watch stream and ends them, so that the server's graceful shutdown
   * need not wait for streams that never end by themselves.
   */
  close(): void {
    this.closed = true;
    this.changed();
  }

  impl(): ServiceImpl<typeof Health> {
    return {
      check: async (req) => {
        const status = this.status(req.service);
        if (status === undefined)
          throw new SwitchboardError(
            Code.NOT_FOUND,
            "SERVICE_UNKNOWN",
            `this server has no service ${JSON.stringify(req.service)}`,
            { metadata: { service: req.service } },
          );
        return { status };
      },
      watch: (req, ctx) => this.watch(req.service, ctx.signal),
    };
  }

  private async *watch(service: string, signal: AbortSignal) {
    let last: ServingStatus | undefined;
    for (;;) {
      const now = this.status(service) ?? ServingStatus.SERVICE_UNKNOWN;
      if (now !== last) {
        last = now;
        yield { status: now };
      }
      if (this.closed || signal.aborted) return;
      await this.next(signal);
    }
  }

  /** Resolves at the next poll, change or close, or when the caller goes away. */
  private next(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        this.waiting.delete(wake);
        signal.removeEventListener("abort", wake);
        if (this.waiting.size === 0) {
          clearInterval(this.poll);
          this.poll = undefined;
        }
        resolve();
      };
      this.waiting.add(wake);
      signal.addEventListener("abort", wake);
      if (!this.poll) {
        this.poll = setInterval(() => this.changed(), WATCH_POLL_MS);
        this.poll.unref();
      }
    });
  }
}
