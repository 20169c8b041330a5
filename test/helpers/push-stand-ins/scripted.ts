/**
 * What a push stand-in answers: queued answers first (an outage: 503, 503, then 429 with Retry-After),
 * then per-token answers (a dead token), then success. Every request that reached the provider
 * logic is recorded with its arrival time, so a test can check retries and their spacing.
 */
export interface ScriptedAnswer {
  status: number;
  /** JSON-encoded when an object. */
  body?: unknown;
  headers?: Record<string, string>;
}

export interface Arrival {
  atMs: number;
  token: string;
  /** The answer's status (the stand-in's own success status included). */
  status: number;
}

export class Script {
  /** Answers for the next requests, whatever their token. */
  readonly queued: ScriptedAnswer[] = [];
  /** Answers for every request to a token. */
  readonly byToken = new Map<string, ScriptedAnswer>();
  readonly arrivals: Arrival[] = [];
  /** Requests refused because they broke the protocol (bad signature, missing header): must stay empty. */
  readonly violations: string[] = [];

  answer(token: string, success: ScriptedAnswer): ScriptedAnswer {
    const chosen = this.queued.shift() ?? this.byToken.get(token) ?? success;
    this.arrivals.push({ atMs: Date.now(), token, status: chosen.status });
    return chosen;
  }

  violation(message: string): void {
    this.violations.push(message);
  }
}

export function encodeBody(body: unknown): string {
  if (body === undefined) return "";
  return typeof body === "string" ? body : JSON.stringify(body);
}
