/**
 * A TCP proxy on loopback that can silently cut the connections it carries: after `blackholeOpen()`
 * the connections open at that moment stay open on both sides but carry nothing more (bytes from
 * either end are discarded, no FIN, no RST), while new connections are forwarded as before. That is
 * what a peer sees when the network forgets a flow (a conntrack or NAT entry lost, a middlebox
 * restarted): the old connection is half-open forever, a new one works at once.
 */
import { createConnection, createServer, type Server, type Socket } from "node:net";

interface Flow {
  client: Socket;
  upstream: Socket;
  blackholed: boolean;
}

export class TcpProxy {
  private readonly flows = new Set<Flow>();
  /** Where new connections go; set before the first connection arrives. */
  targetPort: number | undefined;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  /** Listens on `port` (any free one unless given: a port chosen before anything listened on it). */
  static async start(targetPort?: number, port = 0): Promise<TcpProxy> {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", resolve);
    });
    const address = server.address();
    if (address === null || typeof address === "string") throw new Error("tcp proxy: no port");
    const proxy = new TcpProxy(server, address.port);
    proxy.targetPort = targetPort;
    server.on("connection", (client) => proxy.accept(client));
    return proxy;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Connections forwarded now (not blackholed). */
  get openFlows(): number {
    let n = 0;
    for (const f of this.flows) if (!f.blackholed) n++;
    return n;
  }

  private accept(client: Socket): void {
    if (this.targetPort === undefined) {
      client.destroy();
      return;
    }
    const upstream = createConnection({ host: "127.0.0.1", port: this.targetPort });
    const flow: Flow = { client, upstream, blackholed: false };
    this.flows.add(flow);
    const forward = (from: Socket, to: Socket) => {
      from.on("data", (chunk) => {
        if (!flow.blackholed) to.write(chunk);
      });
      from.on("end", () => {
        if (!flow.blackholed) to.end();
      });
    };
    forward(client, upstream);
    forward(upstream, client);
    const close = () => {
      this.flows.delete(flow);
      client.destroy();
      upstream.destroy();
    };
    // A blackholed flow hides its ends too: the other side learns nothing.
    client.on("error", () => (flow.blackholed ? undefined : close()));
    upstream.on("error", () => (flow.blackholed ? undefined : close()));
    client.on("close", () => (flow.blackholed ? undefined : close()));
    upstream.on("close", () => (flow.blackholed ? undefined : close()));
  }

  /** The connections open now carry nothing more, in either direction; returns how many. */
  blackholeOpen(): number {
    let n = 0;
    for (const f of this.flows) {
      if (!f.blackholed) n++;
      f.blackholed = true;
    }
    return n;
  }

  async close(): Promise<void> {
    for (const f of this.flows) {
      f.client.destroy();
      f.upstream.destroy();
    }
    this.flows.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
