/**
 * Routing events in memory.
 */
import type { Closeable, RoutingEvents, SessionEvent } from "../types.js";

/**
 * Sessions live and die with this process in embedded mode, so the routing table needs no disk:
 * a restart starts with no sessions, which is the truth.
 */
export class InMemoryRouting implements RoutingEvents {
  private readonly sessions = new Map<string, SessionEvent>();
  private readonly handlers = new Set<(e: SessionEvent) => void>();

  async publish(event: SessionEvent): Promise<void> {
    if (event.kind === "up") this.sessions.set(event.sessionId, event);
    else if (event.kind === "down") this.sessions.delete(event.sessionId);
    else {
      for (const [id, s] of this.sessions) {
        if (s.gatewayId === event.gatewayId && s.gatewayEpoch <= event.gatewayEpoch) this.sessions.delete(id);
      }
    }
    for (const h of this.handlers) h(event);
  }

  async subscribe(handler: (e: SessionEvent) => void): Promise<Closeable> {
    for (const s of this.sessions.values()) handler(s);
    this.handlers.add(handler);
    return { close: async () => void this.handlers.delete(handler) };
  }

  async close(): Promise<void> {
    this.handlers.clear();
  }
}
