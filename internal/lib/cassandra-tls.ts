/**
 * TLS options for cassandra-driver. The driver checks no certificate unless told (its default is
 * `rejectUnauthorized: false`): encrypted, but to whoever answers. Here a node must present a
 * certificate that `ca` signs (the system's CAs without one). Host names are not checked: the driver
 * connects to the addresses the cluster reports for its nodes, which node certificates rarely name,
 * so the nodes' CA should be one of your own, not a public one.
 */
import type { ConnectionOptions } from "node:tls";

export function cassandraTls(ca?: readonly string[]): ConnectionOptions {
  return {
    ...(ca && ca.length > 0 ? { ca: [...ca] } : {}),
    rejectUnauthorized: true,
    checkServerIdentity: () => undefined,
  };
}
