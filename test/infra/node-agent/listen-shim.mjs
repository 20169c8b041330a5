// The node agent's stand-in for a Pod network namespace, loaded into every Node program of a Pod
// with NODE_OPTIONS=--import=<this file>.
//
// Every Pod shares the host's network, so two Pods that both listen on 0.0.0.0:8080 would collide.
// Each Pod has its own loopback address (its Pod IP, in SWITCHBOARD_NODE_AGENT_POD_IP), so this
// shim rewrites net.Server#listen calls that bind the unspecified address (no host, "", 0.0.0.0,
// ::) to bind the Pod IP instead: http, https, http2, gRPC and WebSocket servers all listen through
// net.Server. Explicit hosts (127.0.0.1, the Pod IP) and Unix sockets are left alone.
//
// What it does not do: anything for programs that are not Node (they bind what they ask for), UDP
// (dgram), or isolation — a Pod can still reach every port on the host, and its 127.0.0.1 is the
// host's, not the Pod's (so containers of one Pod reach each other on the Pod IP, not localhost).
import net from "node:net";

const podIP = process.env.SWITCHBOARD_NODE_AGENT_POD_IP;

const UNSPECIFIED = new Set(["", "0.0.0.0", "::", "[::]", "::0", "0:0:0:0:0:0:0:0"]);
const unspecified = (host) => host === undefined || host === null || UNSPECIFIED.has(host);
const isPort = (v) => typeof v === "number" || (typeof v === "string" && /^\d+$/.test(v));

/** The listen arguments with an unspecified host replaced by the Pod IP (others unchanged). */
export function rewriteListenArgs(args, ip) {
  const [first, ...rest] = args;
  // listen(options[, cb]): a TCP port with no host or an unspecified one.
  if (first !== null && typeof first === "object" && !("_handle" in first) && !("fd" in first)) {
    if (first.path === undefined && unspecified(first.host)) return [{ ...first, host: ip }, ...rest];
    return args;
  }
  // listen(port[, host][, backlog][, cb]) and listen([cb]): no host means all addresses.
  if (first === undefined || first === null || typeof first === "function" || isPort(first)) {
    const port = typeof first === "function" || first === undefined || first === null ? 0 : first;
    const tail = typeof first === "function" ? args : rest;
    if (typeof tail[0] === "string" || tail[0] === null || (tail[0] === undefined && tail.length > 0)) {
      return unspecified(tail[0]) ? [port, ip, ...tail.slice(1)] : [port, ...tail];
    }
    return [port, ip, ...tail];
  }
  return args; // a pipe path or a handle
}

if (podIP) {
  const listen = net.Server.prototype.listen;
  net.Server.prototype.listen = function listenOnPodIP(...args) {
    return listen.apply(this, rewriteListenArgs(args, podIP));
  };
}
