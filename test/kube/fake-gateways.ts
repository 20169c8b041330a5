/**
 * Stand-ins for gateway processes behind kwok's fake Pods. kwok gives Pods loopback IPs
 * (127.244.0.0/16, test/infra/kube/up.sh), so for every Running gateway Pod this farm serves the real
 * gateway.v1 GatewayService on `podIP:9090`: Stats reports the connection count the test sets, and
 * Drain records the call and moves the Pod's connections away after `drainMs`; the credentials the
 * calls carry are recorded. They serve plaintext, or TLS with the credentials given.
 */
import * as grpc from "@grpc/grpc-js";
import type { V1Pod } from "@kubernetes/client-node";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { addService, guardServer } from "../../internal/lib/rpc.js";
import type { KubeClient } from "../../operator/kube/client.js";

interface FakeGateway {
  pod: string;
  ip: string;
  server: grpc.Server;
  connections: number;
  draining: boolean;
  epoch: number;
}

export class GatewayFarm {
  private readonly gateways = new Map<string, FakeGateway>();
  readonly drained: string[] = [];
  /** The `authorization` metadata of the calls the gateways received. */
  readonly authorizations: string[] = [];
  /** Connections a newly seen gateway starts with. */
  initialConnections = 0;
  private timer: NodeJS.Timeout | undefined;
  private syncing: Promise<void> = Promise.resolve();

  constructor(
    private readonly kube: KubeClient,
    private readonly namespace: string,
    private readonly selector: string,
    /** How long a drained gateway's connections take to move away (a test may lengthen it). */
    public drainMs = 300,
    /** What the gateways serve with: plaintext, or TLS (a cluster with spec.grpc.tls). */
    private readonly serverCredentials: () => grpc.ServerCredentials = grpc.ServerCredentials.createInsecure,
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      this.syncing = this.syncing.then(() => this.sync()).catch(() => undefined);
    }, 200);
  }

  pods(): string[] {
    return [...this.gateways.keys()].sort();
  }

  setConnections(pod: string, connections: number): void {
    const g = this.gateways.get(pod);
    if (!g) throw new Error(`no fake gateway for ${pod}`);
    g.connections = connections;
  }

  /** The gateway drains as if told by someone else than the operator: no Drain call recorded. */
  drainByHand(pod: string): void {
    const g = this.gateways.get(pod);
    if (!g) throw new Error(`no fake gateway for ${pod}`);
    g.draining = true;
    g.connections = 0;
  }

  setAll(connections: number): void {
    for (const g of this.gateways.values()) g.connections = connections;
  }

  total(): number {
    return [...this.gateways.values()].reduce((s, g) => s + g.connections, 0);
  }

  /** Starts a server for every Running gateway Pod with an IP, stops those whose Pod went away. */
  async sync(): Promise<void> {
    const { items } = await this.kube.list<V1Pod>(
      { apiVersion: "v1", kind: "Pod", namespace: this.namespace },
      this.selector,
    );
    const live = new Map(
      items
        .filter((p) => p.status?.phase === "Running" && p.status.podIP && !p.metadata?.deletionTimestamp)
        .map((p) => [p.metadata?.name ?? "", p.status?.podIP ?? ""]),
    );
    for (const [pod, g] of this.gateways)
      if (live.get(pod) !== g.ip) {
        g.server.forceShutdown();
        this.gateways.delete(pod);
      }
    for (const [pod, ip] of live) if (!this.gateways.has(pod)) await this.serve(pod, ip);
  }

  private async serve(pod: string, ip: string): Promise<void> {
    const g: FakeGateway = {
      pod,
      ip,
      server: new grpc.Server(),
      connections: this.initialConnections,
      draining: false,
      epoch: Date.now(),
    };
    // The credentials the operator's calls carry (ADR 0007), recorded; every call is let through.
    guardServer(g.server, async (_path, authorization) => {
      if (authorization !== undefined) this.authorizations.push(authorization);
      return undefined;
    });
    addService(g.server, GatewayService, {
      // The operator never opens a delivery stream.
      async *deliver() {},
      drain: async () => {
        this.drained.push(pod);
        const moved = g.connections;
        g.draining = true;
        setTimeout(() => {
          g.connections = 0;
        }, this.drainMs).unref();
        return { connections: moved };
      },
      stats: async () => ({
        gatewayId: pod,
        connections: g.connections,
        users: g.connections,
        draining: g.draining,
        epoch: BigInt(g.epoch),
      }),
    });
    await new Promise<void>((resolve, reject) =>
      g.server.bindAsync(`${ip}:9090`, this.serverCredentials(), (err) => (err ? reject(err) : resolve())),
    );
    this.gateways.set(pod, g);
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.syncing;
    for (const g of this.gateways.values()) g.server.forceShutdown();
    this.gateways.clear();
  }
}
