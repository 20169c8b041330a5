/**
 * The operator's calls to gateway Pods (gateway.v1 GatewayService over gRPC on the Pod IP): `Stats`
 * for the autoscaler and the status, `Drain` before a scale-down. One channel per Pod address, closed
 * when the Pod is gone. Each call carries the operator's credential for the gateway's cluster (its
 * token audience), when it has one (ADR 0007).
 */
import { GatewayService, type StatsResponse } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { grpcClient, type ServiceClient } from "../../internal/lib/rpc.js";

const CALL_TIMEOUT_MS = 2_000;

export interface GatewayStats {
  gatewayId: string;
  connections: number;
  draining: boolean;
  epoch: number;
}

export interface GatewayClients {
  /** `audience`: the token audience of the gateway's cluster. */
  stats(address: string, audience: string): Promise<GatewayStats>;
  drain(address: string, windowMs: number, audience: string): Promise<number>;
  /** Closes the channels of addresses not in `keep`. */
  retain(keep: Set<string>): void;
  close(): void;
}

/** The operator's credential for a cluster's token audience (OperatorTokens), if it has one. */
export type OperatorCredential = (audience: string) => Promise<string | undefined>;

export function createGatewayClients(credential?: OperatorCredential): GatewayClients {
  const channels = new Map<string, ServiceClient<typeof GatewayService> & { close(): void }>();
  /** The credential each address's next call carries (set just before the call). */
  const bearers = new Map<string, string | undefined>();
  const client = async (address: string, audience: string) => {
    bearers.set(address, await credential?.(audience));
    let c = channels.get(address);
    if (!c) {
      c = grpcClient(GatewayService, address, { bearer: () => bearers.get(address) });
      channels.set(address, c);
    }
    return c;
  };
  return {
    async stats(address, audience) {
      const r: StatsResponse = await (await client(address, audience)).stats(
        {},
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      return {
        gatewayId: r.gatewayId,
        connections: r.connections,
        draining: r.draining,
        epoch: Number(r.epoch),
      };
    },
    async drain(address, windowMs, audience) {
      const r = await (await client(address, audience)).drain({ windowMs }, { timeoutMs: CALL_TIMEOUT_MS });
      return r.connections;
    },
    retain(keep) {
      for (const [address, c] of channels)
        if (!keep.has(address)) {
          c.close();
          channels.delete(address);
          bearers.delete(address);
        }
    },
    close() {
      for (const c of channels.values()) c.close();
      channels.clear();
    },
  };
}
