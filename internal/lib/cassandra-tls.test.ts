/**
 * cassandra-driver with cassandraTls's options against a TLS server on loopback: the handshake
 * completes only with a certificate one of the given CAs signs (the driver's own default would
 * complete it with any).
 */
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { createServer } from "node:tls";
import cassandra from "cassandra-driver";
import { afterAll, describe, expect, it } from "vitest";
import { TestPki } from "../../test/helpers/certificates.js";
import { cassandraTls } from "./cassandra-tls.js";

const pki = new TestPki();
afterAll(() => pki.close());

async function handshakes(ca: readonly string[] | undefined, options: object | undefined) {
  const nodeCa = pki.ca("node-ca");
  const leaf = pki.issue(nodeCa);
  let completed = 0;
  const server = createServer({ cert: leaf.cert, key: leaf.key }, (socket) => {
    completed++;
    socket.destroy(); // speaks no Cassandra: the driver's connect fails after the handshake
  });
  server.on("tlsClientError", () => undefined);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  const client = new cassandra.Client({
    contactPoints: [`127.0.0.1:${port}`],
    localDataCenter: "dc1",
    sslOptions: options ?? cassandraTls(ca === undefined ? [nodeCa.cert] : ca),
    socketOptions: { connectTimeout: 3_000 },
    pooling: { warmup: false },
  });
  try {
    await expect(client.connect()).rejects.toThrow();
  } finally {
    await client.shutdown().catch(() => undefined);
    server.close();
  }
  return completed;
}

describe("cassandraTls", () => {
  it("lets the driver complete a handshake only with a node whose certificate a given CA signs", async () => {
    expect(await handshakes(undefined, undefined)).toBeGreaterThan(0);
    expect(await handshakes([pki.ca("another-ca").cert], undefined)).toBe(0);
    // What it guards against: the driver alone, with the same CA, completes it with any certificate.
    expect(await handshakes(undefined, { ca: [pki.ca("another-ca").cert] })).toBeGreaterThan(0);
  }, 30_000);
});
