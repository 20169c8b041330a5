/**
 * Failures of cassandra-driver's own background work that nothing of ours awaits, and that the
 * driver recovers from by itself: a process must not stop for them (cmd/switchboard.ts stops on any
 * other rejection nothing handled). No driver import here: the CLI's entry point loads this.
 */

/**
 * cassandra-driver 4.10 (the newest release) runs two refreshes of its control connection at once
 * when a node restarts: one started by the closed socket, one by its reconnection timer. The second
 * resets the connection (to null) that the first goes on using, and the first, called from a timer,
 * rejects with nothing to handle it: a `TypeError` thrown in `ControlConnection` itself (seen in
 * `_setHealthListeners`, reading `once`, and in `_refresh`, reading `endpoint`). The second goes on
 * and connects, so the client keeps working; seen from outside in 2 of 6 restarts of the node, where
 * it had stopped routers, gateways and presence at once.
 */
export function isControlConnectionRace(err: unknown): boolean {
  if (!(err instanceof TypeError) || !/^Cannot read properties of null/.test(err.message)) return false;
  // Thrown by the driver's control connection itself: its first frame.
  const thrownAt = (err.stack ?? "").split("\n").find((line) => line.trimStart().startsWith("at "));
  return (
    thrownAt !== undefined &&
    /at ControlConnection\.\w+ \(.*cassandra-driver[\\/]lib[\\/]control-connection\.js:\d+:\d+\)$/.test(
      thrownAt,
    )
  );
}
