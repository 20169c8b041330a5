export type Listener<T> = (payload: T) => void;

/**
 * A minimal typed event emitter (no Node `events` dependency so the SDK runs in browsers). Each
 * event carries one payload object. A throwing listener does not break the emitter's owner (its state
 * machine keeps running): the error goes to `listenerFailed`, which subclasses override.
 */
export class TypedEmitter<Events extends { [K in keyof Events]: unknown }> {
  private readonly listeners = new Map<keyof Events, Set<Listener<never>>>();

  /** Subscribes; returns a function that unsubscribes. */
  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as Listener<never>);
    return () => this.off(event, listener);
  }

  once<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    const off = this.on(event, (payload) => {
      off();
      listener(payload);
    });
    return off;
  }

  off<K extends keyof Events>(event: K, listener: Listener<Events[K]>): void {
    this.listeners.get(event)?.delete(listener as Listener<never>);
  }

  listenerCount(event: keyof Events): number {
    return this.listeners.get(event)?.size ?? 0;
  }

  protected emit<K extends keyof Events>(event: K, payload: Events[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        (listener as Listener<Events[K]>)(payload);
      } catch (err) {
        this.listenerFailed(err, event);
      }
    }
  }

  /** Default: rethrow outside our call stack, like a DOM event listener's error. */
  protected listenerFailed(err: unknown, _event: keyof Events): void {
    queueMicrotask(() => {
      throw err;
    });
  }
}
