/**
 * The operator's calls to gateway Pods (gateway.v1 GatewayService over gRPC on the Pod IP): `Stats`
 * for the autoscaler and the status, `Drain` before a scale-down. One channel per Pod address, closed
 * when the Pod is gone. Each call carries the operator's credential for the gateway's cluster (its
 * token audience), when it has one (ADR 0007).
 *
 * On a cluster with spec.grpc.tls the channel is TLS: the operator keeps authenticating with its
 * token (the gateways admit bearer callers without a client certificate:
 * grpc.tls.clientCertificate=optional), and it trusts the gateway only if the CA of the gateway's own
 * Secret (ca.crt) signed its certificate and the certificate names `switchboard://role:gateway`. The
 * identity is checked instead of a host name: the operator dials Pod IPs, which no certificate names,
 * and a certificate of the same CA issued to a backend client must not pass for a gateway.
 */
import { X509Certificate } from "node:crypto";
import type { PeerCertificate } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { GatewayService, type StatsResponse } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { grpcClient, type ServiceClient } from "../../internal/lib/rpc.js";

const CALL_TIMEOUT_MS = 2_000;
/** The identity a gateway's certificate names (grpc-tls.ts roleIdentityUri). */
export const GATEWAY_IDENTITY_URI = "switchboard://role:gateway";

export interface GatewayStats {
  gatewayId: string;
  connections: number;
  draining: boolean;
  epoch: number;
}

/** How to reach a cluster's gateways: its token audience, and TLS when the cluster has it. */
export interface GatewayAccess {
  audience: string;
  /**
   * The CAs (PEM) that sign the gateways' certificates, from their Secret's ca.crt; `null` when the
   * cluster has TLS but the Secret (or its ca.crt) is not there yet: calls fail rather than go in
   * plaintext. Absent: plaintext.
   */
  tlsCa?: string | null;
}

export interface GatewayClients {
  stats(address: string, access: GatewayAccess): Promise<GatewayStats>;
  drain(address: string, windowMs: number, access: GatewayAccess): Promise<number>;
  /** Closes the channels of addresses not in `keep`. */
  retain(keep: Set<string>): void;
  close(): void;
}

/** The operator's credential for a cluster's token audience (OperatorTokens), if it has one. */
export type OperatorCredential = (audience: string) => Promise<string | undefined>;

type Channel = ServiceClient<typeof GatewayService> & { close(): void };

/** Accepts a gateway's certificate (its chain verified by TLS) only if it names GATEWAY_IDENTITY_URI. */
export function gatewayIdentityCheck(_host: string, cert: PeerCertificate): Error | undefined {
  const uris = cert.raw
    ? (new X509Certificate(cert.raw).subjectAltName ?? "").split(/,\s*/).filter((e) => e.startsWith("URI:"))
    : [];
  return uris.includes(`URI:${GATEWAY_IDENTITY_URI}`)
    ? undefined
    : new Error(
        `gRPC TLS: the server's certificate names ${uris.join(", ") || "no URI"}, expected ${GATEWAY_IDENTITY_URI}`,
      );
}

function credentialsFor(tlsCa: string | null | undefined): grpc.ChannelCredentials {
  if (tlsCa === undefined) return grpc.credentials.createInsecure();
  if (tlsCa === null)
    throw new Error("the cluster serves gRPC over TLS, but the gateways' Secret has no ca.crt yet");
  return grpc.credentials.createSsl(Buffer.from(tlsCa), null, null, {
    checkServerIdentity: gatewayIdentityCheck,
  });
}

export function createGatewayClients(credential?: OperatorCredential): GatewayClients {
  /** Each address's channel and the CA it was made with: a renewed CA makes a new channel. */
  const channels = new Map<string, { client: Channel; tlsCa: string | null | undefined }>();
  /** The credential each address's next call carries (set just before the call). */
  const bearers = new Map<string, string | undefined>();
  const client = async (address: string, access: GatewayAccess) => {
    bearers.set(address, await credential?.(access.audience));
    const current = channels.get(address);
    if (current && current.tlsCa === access.tlsCa) return current.client;
    current?.client.close();
    const made = grpcClient(GatewayService, address, {
      credentials: credentialsFor(access.tlsCa),
      // Sent as SNI and handed to the identity check instead of the Pod IP.
      ...(access.tlsCa ? { serverName: "gateway.switchboard" } : {}),
      bearer: () => bearers.get(address),
    });
    channels.set(address, { client: made, tlsCa: access.tlsCa });
    return made;
  };
  return {
    async stats(address, access) {
      const r: StatsResponse = await (await client(address, access)).stats(
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
    async drain(address, windowMs, access) {
      const r = await (await client(address, access)).drain({ windowMs }, { timeoutMs: CALL_TIMEOUT_MS });
      return r.connections;
    },
    retain(keep) {
      for (const [address, c] of channels)
        if (!keep.has(address)) {
          c.client.close();
          channels.delete(address);
          bearers.delete(address);
        }
    },
    close() {
      for (const c of channels.values()) c.client.close();
      channels.clear();
    },
  };
}
