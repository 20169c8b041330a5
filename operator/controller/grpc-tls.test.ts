import * as grpc from "@grpc/grpc-js";
import type {
  V1ConfigMap,
  V1Container,
  V1Deployment,
  V1PodSpec,
  V1StatefulSet,
} from "@kubernetes/client-node";
import { afterAll, describe, expect, it } from "vitest";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { envName, loadConfig } from "../../internal/lib/config.js";
import { addService, guardServer } from "../../internal/lib/rpc.js";
import { type Issued, TestPki } from "../../test/helpers/certificates.js";
import { exampleSpec } from "../../test/kube/example-spec.js";
import { type ChatCluster, type ChatClusterSpec, COMPONENTS, type ComponentName } from "../api/v1alpha1.js";
import { computeConditions } from "./conditions.js";
import { desiredObjects } from "./desired.js";
import { createGatewayClients } from "./gateway-client.js";
import {
  type Certificate,
  certificateNotReady,
  desiredCertificates,
  GRPC_TLS_DIR,
  type GrpcTlsState,
  missingTlsKeys,
} from "./grpc-tls.js";

const spec = exampleSpec;
const withTls = (tls: NonNullable<ChatClusterSpec["grpc"]>["tls"]): ChatCluster => ({
  apiVersion: "switchboard.dev/v1alpha1",
  kind: "ChatCluster",
  metadata: { name: "chat", namespace: "prod", uid: "uid-1", generation: 3 },
  spec: { ...spec, grpc: { tls } },
});
const issued = withTls({
  enabled: true,
  issuerRef: { name: "chat-ca", kind: "ClusterIssuer", group: "cert-manager.io" },
});
const provided = withTls({ enabled: true });
const plaintext = withTls({
  enabled: false,
  issuerRef: { name: "chat-ca", kind: "Issuer", group: "cert-manager.io" },
});
/** A cluster whose CRD predates spec.grpc. */
const older: ChatCluster = { ...plaintext, spec };

const TLS_DIR_ENV = envName(["grpc", "tls", "dir"]);
const CLIENT_CERTIFICATE_ENV = envName(["grpc", "tls", "clientCertificate"]);
const SERVING: ComponentName[] = ["id", "router", "presence", "push", "gateway"];

function podSpecs(cluster: ChatCluster, certificatesServed = true): Map<ComponentName, V1PodSpec> {
  const pods = new Map<ComponentName, V1PodSpec>();
  for (const o of desiredObjects(cluster, { gatewayReplicas: 2, certificatesServed }))
    if (o.kind === "Deployment" || o.kind === "StatefulSet") {
      const component = o.metadata?.labels?.["app.kubernetes.io/component"] as ComponentName;
      const podSpec = (o as V1Deployment | V1StatefulSet).spec?.template.spec;
      if (podSpec) pods.set(component, podSpec);
    }
  return pods;
}
const containerOf = (pod: V1PodSpec | undefined): V1Container => pod?.containers[0] as V1Container;

describe("spec.grpc.tls builders", () => {
  it("makes one cert-manager Certificate per serving component, owned by the ChatCluster", () => {
    const certificates = desiredCertificates(issued);
    expect(certificates.map((c) => c.metadata?.name)).toEqual(SERVING.map((c) => `chat-${c}-grpc-tls`));
    for (const [i, certificate] of certificates.entries()) {
      const c = SERVING[i] as ComponentName;
      expect(certificate.apiVersion).toBe("cert-manager.io/v1");
      expect(certificate.metadata).toMatchObject({
        namespace: "prod",
        labels: { "app.kubernetes.io/instance": "chat", "app.kubernetes.io/component": c },
        ownerReferences: [{ kind: "ChatCluster", name: "chat", uid: "uid-1", controller: true }],
      });
      expect(certificate.spec).toMatchObject({
        secretName: `chat-${c}-grpc-tls`,
        // The identity the other roles' clients check, and the only principal the certificate claims.
        uris: [`switchboard://role:${c}`],
        usages: ["digital signature", "server auth", "client auth"],
        privateKey: { algorithm: "ECDSA", size: 256, rotationPolicy: "Always" },
        issuerRef: { name: "chat-ca", kind: "ClusterIssuer", group: "cert-manager.io" },
      });
      expect(certificate.spec.dnsNames.slice(0, 4)).toEqual([
        `chat-${c}`,
        `chat-${c}.prod`,
        `chat-${c}.prod.svc`,
        `chat-${c}.prod.svc.cluster.local`,
      ]);
    }
    // The StatefulSets' Pods are dialled by their stable names (presence shards).
    const presence = certificates.find((c) => c.metadata?.name === "chat-presence-grpc-tls");
    expect(presence?.spec.dnsNames).toContain("*.chat-presence.prod.svc.cluster.local");
    expect(
      certificates.find((c) => c.metadata?.name === "chat-gateway-grpc-tls")?.spec.dnsNames,
    ).toHaveLength(4);
  });

  it("makes no Certificate without an issuer, with TLS off, or under an older CRD", () => {
    expect(desiredCertificates(provided)).toEqual([]);
    expect(desiredCertificates(plaintext)).toEqual([]);
    expect(desiredCertificates(older)).toEqual([]);
  });

  it("desires the Certificates only where the API server serves cert-manager's kind", () => {
    const kinds = (served: boolean) =>
      desiredObjects(issued, { gatewayReplicas: 2, certificatesServed: served }).filter(
        (o) => o.kind === "Certificate",
      ).length;
    expect(kinds(true)).toBe(5);
    expect(kinds(false)).toBe(0);
    expect(
      desiredObjects(provided, { gatewayReplicas: 2, certificatesServed: true }).some(
        (o) => o.kind === "Certificate",
      ),
    ).toBe(false);
  });

  it("mounts each serving component's Secret as grpc.tls.dir with optional client certificates, Secret provided or issued", () => {
    // Also where cert-manager is missing: the Pods wait for their Secrets rather than serve plaintext.
    for (const cluster of [issued, provided])
      for (const served of [true, false]) {
        const pods = podSpecs(cluster, served);
        expect([...pods.keys()].sort()).toEqual([...COMPONENTS].sort());
        for (const c of SERVING) {
          const pod = pods.get(c);
          expect(pod?.volumes).toContainEqual({
            name: "grpc-tls",
            secret: { secretName: `chat-${c}-grpc-tls` },
          });
          const container = containerOf(pod);
          expect(container.volumeMounts).toContainEqual({
            name: "grpc-tls",
            mountPath: GRPC_TLS_DIR,
            readOnly: true,
          });
          const env = Object.fromEntries((container.env ?? []).map((e) => [e.name, e.value]));
          // The settings parse as the services' configuration and mean what the ADR says.
          const config = loadConfig({
            [TLS_DIR_ENV]: env[TLS_DIR_ENV] ?? "",
            [CLIENT_CERTIFICATE_ENV]: env[CLIENT_CERTIFICATE_ENV] ?? "",
          });
          expect(config.grpc.tls).toMatchObject({ dir: GRPC_TLS_DIR, clientCertificate: "optional" });
          // Still a restricted Pod: a Secret volume is allowed, nothing else changed.
          expect(container.securityContext).toMatchObject({
            readOnlyRootFilesystem: true,
            runAsNonRoot: true,
          });
        }
        // The sequencer serves and calls no gRPC: no certificate, no TLS settings.
        const sequencer = pods.get("sequencer");
        expect(sequencer?.volumes?.some((v) => v.name === "grpc-tls")).toBe(false);
        expect(containerOf(sequencer).env?.some((e) => e.name.startsWith("SWITCHBOARD_GRPC_TLS"))).toBe(
          false,
        );
      }
  });

  it("changes nothing without TLS (and the shared ConfigMap never carries the TLS settings)", () => {
    for (const cluster of [plaintext, older]) {
      for (const pod of podSpecs(cluster).values()) {
        expect(pod.volumes?.some((v) => v.name === "grpc-tls")).toBe(false);
        expect(containerOf(pod).env?.some((e) => e.name.startsWith("SWITCHBOARD_GRPC_TLS"))).toBe(false);
      }
    }
    const config = desiredObjects(issued, { gatewayReplicas: 2 }).find(
      (o) => o.kind === "ConfigMap",
    ) as V1ConfigMap;
    expect(Object.keys(config.data ?? {}).filter((k) => k.startsWith("SWITCHBOARD_GRPC_TLS"))).toEqual([]);
  });

  it("reads a Certificate's readiness and a Secret's missing keys", () => {
    const certificate = (conditions?: NonNullable<Certificate["status"]>["conditions"]) =>
      ({ ...desiredCertificates(issued)[0], status: conditions ? { conditions } : undefined }) as Certificate;
    expect(certificateNotReady(certificate([{ type: "Ready", status: "True" }]))).toBeUndefined();
    expect(certificateNotReady(certificate())).toBe("chat-id-grpc-tls (not issued yet)");
    expect(
      certificateNotReady(
        certificate([
          { type: "Ready", status: "False", reason: "DoesNotExist", message: "Issuer chat-ca not found" },
        ]),
      ),
    ).toBe("chat-id-grpc-tls (DoesNotExist: Issuer chat-ca not found)");
    expect(missingTlsKeys(undefined)).toEqual(["tls.crt", "tls.key", "ca.crt"]);
    expect(missingTlsKeys({ "tls.crt": "x", "tls.key": "y" })).toEqual(["ca.crt"]);
    expect(missingTlsKeys({ "tls.crt": "x", "tls.key": "y", "ca.crt": "z" })).toEqual([]);
  });

  it("reports a GrpcTLS condition with observedGeneration, only when TLS is on", () => {
    const now = new Date("2026-12-02T03:00:00Z");
    const base = { generation: 3, provisioned: true, components: {}, drainingGateways: 0 };
    const grpcTls = (state: GrpcTlsState) =>
      computeConditions(undefined, { ...base, grpcTls: state }, now).find((c) => c.type === "GrpcTLS");
    expect(grpcTls({ kind: "Ready" })).toMatchObject({
      status: "True",
      reason: "CertificatesReady",
      observedGeneration: 3,
    });
    expect(grpcTls({ kind: "CertManagerNotInstalled" })).toMatchObject({
      status: "False",
      reason: "CertManagerNotInstalled",
    });
    expect(grpcTls({ kind: "CertManagerNotInstalled" })?.message).toContain("install cert-manager");
    expect(
      grpcTls({ kind: "CertificatesNotReady", notReady: ["chat-id-grpc-tls (not issued yet)"] }),
    ).toMatchObject({
      status: "False",
      reason: "CertificatesNotReady",
      message: "waiting for cert-manager: chat-id-grpc-tls (not issued yet)",
    });
    expect(grpcTls({ kind: "SecretsMissing", missing: ["chat-id-grpc-tls (not found)"] })?.message).toContain(
      "chat-id-grpc-tls (not found)",
    );
    expect(grpcTls({ kind: "Pending" })).toMatchObject({ status: "Unknown", reason: "Pending" });
    expect(computeConditions(undefined, base, now).map((c) => c.type)).toEqual([
      "Ready",
      "Progressing",
      "Degraded",
    ]);
  });
});

describe("the operator's Drain/Stats channel over TLS", () => {
  const pki = new TestPki();
  const ca = pki.ca("cluster-ca");
  const otherCa = pki.ca("other-ca");
  const servers: grpc.Server[] = [];
  const clients = createGatewayClients(async () => "operator-token");
  afterAll(() => {
    clients.close();
    for (const s of servers) s.forceShutdown();
    pki.close();
  });

  /** A gateway on 127.0.0.1 presenting `identity` and accepting callers without certificates. */
  async function gateway(identity: Issued, seen: string[]): Promise<string> {
    const server = new grpc.Server();
    servers.push(server);
    // Records the credential of every call that got past the handshake; lets each through.
    guardServer(server, async (_path, authorization) => {
      seen.push(String(authorization));
      return undefined;
    });
    addService(server, GatewayService, {
      async *deliver() {},
      drain: async () => ({ connections: 0 }),
      stats: async () => ({ gatewayId: "g", connections: 7, users: 7, draining: false, epoch: 1n }),
    });
    const credentials = grpc.ServerCredentials.createSsl(
      Buffer.from(ca.cert),
      [{ cert_chain: Buffer.from(identity.cert), private_key: Buffer.from(identity.key) }],
      false,
    );
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", credentials, (err, p) => (err ? reject(err) : resolve(p))),
    );
    return `127.0.0.1:${port}`;
  }

  it("trusts a gateway the cluster's CA signed for role:gateway and sends the operator's token", async () => {
    const seen: string[] = [];
    const address = await gateway(pki.issue(ca, { uri: "switchboard://role:gateway" }), seen);
    const stats = await clients.stats(address, { audience: "switchboard.dev/chat", tlsCa: ca.cert });
    expect(stats.connections).toBe(7);
    expect(seen).toEqual(["Bearer operator-token"]);
  });

  it("refuses a server of another role, of another CA, and TLS without the cluster's CA", async () => {
    const seen: string[] = [];
    const router = await gateway(pki.issue(ca, { uri: "switchboard://role:router" }), seen);
    await expect(clients.stats(router, { audience: "a", tlsCa: ca.cert })).rejects.toThrow(
      /expected switchboard:\/\/role:gateway/,
    );
    const address = await gateway(pki.issue(ca, { uri: "switchboard://role:gateway" }), seen);
    await expect(clients.stats(address, { audience: "a", tlsCa: otherCa.cert })).rejects.toThrow();
    await expect(clients.stats(address, { audience: "a", tlsCa: null })).rejects.toThrow(/no ca\.crt/);
    // Plaintext to a TLS port fails too: no call ever reached a handler.
    await expect(clients.stats(address, { audience: "a" })).rejects.toThrow();
    expect(seen).toEqual([]);
  });
});
