/**
 * The operator's calls to gateway Pods (gateway.v1 GatewayService over gRPC on the Pod IP): `Stats`
 * for the autoscaler and the status, `Drain` before a scale-down. One channel per Pod address, closed
 * when the Pod is gone.
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
  stats(address: string): Promise<GatewayStats>;
  drain(address: string, windowMs: number): Promise<number>;
  /** Closes the channels of addresses not in `keep`. */
  retain(keep: Set<string>): void;
  close(): void;
}

export function createGatewayClients(): GatewayClients {
  const channels = new Map<string, ServiceClient<typeof GatewayService> & { close(): void }>();
  const client = (address: string) => {
    let c = channels.get(address);
    if (!c) {
      c = grpcClient(GatewayService, address);
      channels.set(address, c);
    }
    return c;
  };
  return {
    async stats(address) {
      const r: StatsResponse = await client(address).stats({}, { timeoutMs: CALL_TIMEOUT_MS });
      return {
        gatewayId: r.gatewayId,
        connections: r.connections,
        draining: r.draining,
        epoch: Number(r.epoch),
      };
    },
    async drain(address, windowMs) {
      const r = await client(address).drain({ windowMs }, { timeoutMs: CALL_TIMEOUT_MS });
      return r.connections;
    },
    retain(keep) {
      for (const [address, c] of channels)
        if (!keep.has(address)) {
          c.close();
          channels.delete(address);
        }
    },
    close() {
      for (const c of channels.values()) c.close();
      channels.clear();
    },
  };
}
