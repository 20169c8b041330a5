/**
 * spec.grpc.tls (ADR 0007) against the real API server, the operator a real process running with the
 * chart's RBAC: the Pods it writes mount each serving component's TLS Secret as grpc.tls.dir; without
 * cert-manager a GrpcTLS condition says why nothing is issued; with cert-manager's Certificate kind
 * (a minimal CRD this test installs: cert-manager itself is not installed, so the test plays its part
 * and sets the Certificates' Ready condition) it creates one owned Certificate per component and
 * follows their readiness; with provided Secrets (openssl-made) its Drain/Stats channel to the
 * gateways is TLS, trusting the gateways' ca.crt, and still carries its token.
 */
import { randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { KubeConfig, type V1Deployment, type V1PodSpec, type V1StatefulSet } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ChatCluster, ComponentName } from "../../operator/api/v1alpha1.js";
import type { Certificate } from "../../operator/controller/grpc-tls.js";
import { KubeClient } from "../../operator/kube/client.js";
import { TestPki } from "../helpers/certificates.js";
import { ensureServer } from "../infra/servers.js";
import { GatewayFarm } from "./fake-gateways.js";
import { installCrd, kubectl as kubectlWith, kubeTools, type Tools, waitFor } from "./helpers.js";
import { installChartOperator, type OperatorProcess, removeChartAndClusters } from "./operator-process.js";

const suffix = randomBytes(3).toString("hex");
const NS = `sb-tls-${suffix}`;
const SYSTEM_NS = `sb-tls-sys-${suffix}`;
const RELEASE = `sbtls-${suffix}`;
const CHART = { release: RELEASE, systemNamespace: SYSTEM_NS };
const OPERATOR_USER = `system:serviceaccount:${SYSTEM_NS}:${RELEASE}-switchboard-operator`;
const NAME = "secure";
const SERVING: ComponentName[] = ["id", "router", "presence", "push", "gateway"];

let tools: Tools;
let kube: KubeClient;
let operator: OperatorProcess;
let kafkaBrokers: string[];
let cassandraPoints: string[];
const pki = new TestPki();

const kubectl = (args: string[], input?: string) => kubectlWith(tools, args, input);

/** The part of cert-manager's certificates.cert-manager.io CRD the operator uses: kind, status. */
const CERTIFICATE_CRD_NAME = "certificates.cert-manager.io";
const CERTIFICATE_CRD = {
  apiVersion: "apiextensions.k8s.io/v1",
  kind: "CustomResourceDefinition",
  metadata: { name: CERTIFICATE_CRD_NAME },
  spec: {
    group: "cert-manager.io",
    scope: "Namespaced",
    names: {
      kind: "Certificate",
      listKind: "CertificateList",
      plural: "certificates",
      singular: "certificate",
    },
    versions: [
      {
        name: "v1",
        served: true,
        storage: true,
        subresources: { status: {} },
        schema: {
          openAPIV3Schema: {
            type: "object",
            properties: {
              spec: { type: "object", "x-kubernetes-preserve-unknown-fields": true },
              status: { type: "object", "x-kubernetes-preserve-unknown-fields": true },
            },
          },
        },
      },
    ],
  },
};

const getCluster = () =>
  kube.get<ChatCluster>({
    apiVersion: "switchboard.dev/v1alpha1",
    kind: "ChatCluster",
    namespace: NS,
    name: NAME,
  });

/** The GrpcTLS condition once it has `reason` at the cluster's current generation. */
async function waitGrpcTls(reason: string, timeoutMs = 90_000) {
  return waitFor(
    `GrpcTLS ${reason}`,
    async () => {
      const c = await getCluster();
      const cond = c.status?.conditions?.find((x) => x.type === "GrpcTLS");
      return cond?.reason === reason && cond.observedGeneration === c.metadata.generation ? cond : undefined;
    },
    timeoutMs,
  );
}

/** A watch event makes the operator look again now, instead of at its next recheck. */
const nudge = () =>
  kubectl(["annotate", "chatcluster", NAME, "-n", NS, `test/nudge=${Date.now()}`, "--overwrite"]);

async function certificates(): Promise<Certificate[]> {
  const { items } = await kube.list<Certificate>(
    { apiVersion: "cert-manager.io/v1", kind: "Certificate", namespace: NS },
    `app.kubernetes.io/instance=${NAME}`,
  );
  return items;
}

async function podSpecs(): Promise<Map<string, V1PodSpec>> {
  const specs = new Map<string, V1PodSpec>();
  for (const kind of ["Deployment", "StatefulSet"] as const) {
    const { items } = await kube.list<V1Deployment | V1StatefulSet>(
      { apiVersion: "apps/v1", kind, namespace: NS },
      `app.kubernetes.io/instance=${NAME}`,
    );
    for (const w of items)
      if (w.spec?.template.spec)
        specs.set(w.metadata?.labels?.["app.kubernetes.io/component"] ?? "", w.spec.template.spec);
  }
  return specs;
}

async function canI(verb: string, resource: string): Promise<boolean> {
  const out = await kubectl(["auth", "can-i", verb, resource, "-n", NS, `--as=${OPERATOR_USER}`]).catch(
    (err: Error) => err.message,
  );
  return out.trim() === "yes";
}

beforeAll(async () => {
  tools = await kubeTools();
  const storage = { ...(await ensureServer("kafka")), ...(await ensureServer("cassandra")) };
  kafkaBrokers = (storage.KAFKA_BROKERS as string).split(",");
  cassandraPoints = (storage.CASSANDRA_CONTACT_POINTS as string).split(",");
  const kc = new KubeConfig();
  kc.loadFromFile(tools.KUBECONFIG);
  kube = new KubeClient(kc);
  // This branch's ChatCluster CRD (it has spec.grpc; the API server would prune it from an older one).
  await installCrd(tools);
  // A run of this file interrupted before its cleanup may have left the CRD behind.
  await kubectl(["delete", "crd", CERTIFICATE_CRD_NAME, "--ignore-not-found", "--wait=true"]);
  operator = await installChartOperator(tools, CHART);
  await kubectl(["create", "namespace", NS]);
  await kubectl(["label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted"]);
  await waitFor("default ServiceAccount", () => kubectl(["get", "serviceaccount", "default", "-n", NS]));
  await operator.start();
});

afterAll(async () => {
  await operator?.kill("SIGTERM");
  if (tools) {
    await removeChartAndClusters(tools, CHART, NS);
    await kubectl(["delete", "crd", CERTIFICATE_CRD_NAME, "--ignore-not-found", "--wait=false"]).catch(
      () => "",
    );
  }
  pki.close();
});

function onFailure(fn: () => Promise<void>): () => Promise<void> {
  return async () => {
    try {
      await fn();
    } catch (err) {
      console.error(`--- operator log (tail) ---\n${operator.tail()}`);
      throw err;
    }
  };
}

describe("operator: spec.grpc.tls", () => {
  it(
    "without cert-manager: the Pods mount their TLS Secrets all the same, and GrpcTLS says cert-manager is missing",
    onFailure(async () => {
      await kube.create({
        apiVersion: "switchboard.dev/v1alpha1",
        kind: "ChatCluster",
        metadata: { name: NAME, namespace: NS },
        spec: {
          version: "0.1.0",
          gateway: { replicas: 1 },
          router: { replicas: 1 },
          presence: { replicas: 1 },
          push: { replicas: 1 },
          id: { replicas: 1 },
          sequencer: { replicas: 1 },
          kafka: {
            bootstrapServers: kafkaBrokers,
            topicPrefix: `tls-${suffix}.`,
            topics: { partitions: 1, replicationFactor: 1, retentionHours: 1 },
          },
          cassandra: {
            contactPoints: cassandraPoints,
            keyspace: `tls_${suffix}`,
            replication: { class: "SimpleStrategy", factor: 1 },
          },
          auth: { jwksUrl: "https://auth.example.com/.well-known/jwks.json" },
          grpc: { tls: { enabled: true, issuerRef: { name: "chat-ca" } } },
        },
      } as unknown as ChatCluster);
      const cond = await waitGrpcTls("CertManagerNotInstalled");
      expect(cond.status).toBe("False");
      expect(cond.message).toContain("install cert-manager");
      // Every serving component's Pods mount their Secret and serve TLS with optional client
      // certificates; the sequencer serves no gRPC and gets neither.
      const specs = await podSpecs();
      expect([...specs.keys()].sort()).toEqual([...SERVING, "sequencer"].sort());
      for (const component of SERVING) {
        const pod = specs.get(component);
        expect(pod?.volumes).toContainEqual(
          expect.objectContaining({
            name: "grpc-tls",
            secret: expect.objectContaining({ secretName: `${NAME}-${component}-grpc-tls` }),
          }),
        );
        const container = pod?.containers[0];
        expect(container?.volumeMounts).toContainEqual(
          expect.objectContaining({
            name: "grpc-tls",
            mountPath: "/etc/switchboard/grpc-tls",
            readOnly: true,
          }),
        );
        expect(container?.env).toEqual(
          expect.arrayContaining([
            { name: "SWITCHBOARD_GRPC_TLS_DIR", value: "/etc/switchboard/grpc-tls" },
            { name: "SWITCHBOARD_GRPC_TLS_CLIENT_CERTIFICATE", value: "optional" },
          ]),
        );
      }
      expect(specs.get("sequencer")?.volumes?.some((v) => v.name === "grpc-tls")).toBe(false);
      // The namespace enforces the restricted Pod Security Standard: the Pods were admitted.
      await waitFor("a gateway Pod admitted", async () => {
        const pods = await kubectl([
          "get",
          "pods",
          "-n",
          NS,
          "-l",
          `app.kubernetes.io/instance=${NAME},app.kubernetes.io/component=gateway`,
          "-o",
          "name",
        ]);
        return pods.trim() !== "" || undefined;
      });
      // And an event tells whoever looks at the cluster.
      await waitFor("CertManagerUnavailable event", async () => {
        const events = await kubectl([
          "get",
          "events",
          "-n",
          NS,
          "--field-selector",
          "reason=CertManagerUnavailable",
          "-o",
          "name",
        ]);
        return events.trim() !== "" || undefined;
      });
    }),
    180_000,
  );

  it(
    "with cert-manager's Certificate kind: one owned Certificate per serving component, and GrpcTLS follows their Ready condition",
    onFailure(async () => {
      await kubectl(["apply", "-f", "-"], JSON.stringify(CERTIFICATE_CRD));
      await kubectl(["wait", "--for=condition=Established", `crd/${CERTIFICATE_CRD_NAME}`, "--timeout=30s"]);
      await nudge();
      const notReady = await waitGrpcTls("CertificatesNotReady");
      expect(notReady.status).toBe("False");
      const cluster = await getCluster();
      const made = await certificates();
      expect(made.map((c) => c.metadata?.name).sort()).toEqual(
        SERVING.map((c) => `${NAME}-${c}-grpc-tls`).sort(),
      );
      for (const certificate of made) {
        const component = certificate.metadata?.labels?.["app.kubernetes.io/component"] as ComponentName;
        expect(certificate.metadata?.ownerReferences).toEqual([
          expect.objectContaining({
            kind: "ChatCluster",
            name: NAME,
            uid: cluster.metadata.uid,
            controller: true,
          }),
        ]);
        expect(certificate.spec).toMatchObject({
          secretName: `${NAME}-${component}-grpc-tls`,
          uris: [`switchboard://role:${component}`],
          usages: ["digital signature", "server auth", "client auth"],
          // Defaulted by the ChatCluster CRD: a namespaced cert-manager Issuer.
          issuerRef: { name: "chat-ca", kind: "Issuer", group: "cert-manager.io" },
        });
        expect(certificate.spec.dnsNames).toContain(`${NAME}-${component}.${NS}.svc.cluster.local`);
      }
      expect(notReady.message).toContain(`${NAME}-gateway-grpc-tls (not issued yet)`);
      // cert-manager issues them (this test plays its part): GrpcTLS turns True.
      for (const certificate of made)
        await kubectl([
          "patch",
          "certificate",
          certificate.metadata?.name ?? "",
          "-n",
          NS,
          "--subresource=status",
          "--type=merge",
          "-p",
          JSON.stringify({ status: { conditions: [{ type: "Ready", status: "True", reason: "Ready" }] } }),
        ]);
      await nudge();
      expect((await waitGrpcTls("CertificatesReady")).status).toBe("True");
      // Least privilege: it writes and prunes Certificates, and reads and changes nothing else of them.
      expect(await canI("create", "certificates.cert-manager.io")).toBe(true);
      expect(await canI("patch", "certificates.cert-manager.io")).toBe(true);
      expect(await canI("delete", "certificates.cert-manager.io")).toBe(true);
      expect(await canI("watch", "certificates.cert-manager.io")).toBe(false);
      expect(await canI("update", "certificates.cert-manager.io")).toBe(false);
      expect(await canI("create", "certificaterequests.cert-manager.io")).toBe(false);
      expect(await canI("create", "issuers.cert-manager.io")).toBe(false);
      expect(await canI("list", "secrets")).toBe(false);
    }),
    180_000,
  );

  it(
    "with provided Secrets: the Certificates are pruned, GrpcTLS checks the Secrets, and Drain/Stats go over TLS with the operator's token",
    onFailure(async () => {
      await kubectl([
        "patch",
        "chatcluster",
        NAME,
        "-n",
        NS,
        "--type=merge",
        "-p",
        JSON.stringify({ spec: { grpc: { tls: { issuerRef: null } } } }),
      ]);
      const missing = await waitGrpcTls("SecretsMissing");
      expect(missing.message).toContain(`${NAME}-gateway-grpc-tls (not found)`);
      await waitFor("Certificates pruned", async () => (await certificates()).length === 0 || undefined);

      // The Secrets, as another PKI would provide them: the cluster's CA signs each role's certificate.
      const ca = pki.ca("cluster-ca");
      const gateway = pki.issue(ca, { uri: "switchboard://role:gateway" });
      const farm = new GatewayFarm(
        kube,
        NS,
        `app.kubernetes.io/instance=${NAME},app.kubernetes.io/component=gateway`,
        300,
        // As the gateways serve with grpc.tls.clientCertificate=optional: TLS, no certificate required.
        () =>
          grpc.ServerCredentials.createSsl(
            Buffer.from(ca.cert),
            [{ cert_chain: Buffer.from(gateway.cert), private_key: Buffer.from(gateway.key) }],
            false,
          ),
      );
      farm.initialConnections = 21;
      farm.start();
      try {
        for (const component of SERVING) {
          const identity =
            component === "gateway" ? gateway : pki.issue(ca, { uri: `switchboard://role:${component}` });
          // Partly first, for the gateway: a Secret without ca.crt is not whole.
          const data: Record<string, string> = { "tls.crt": identity.cert, "tls.key": identity.key };
          if (component !== "gateway") data["ca.crt"] = ca.cert;
          await kube.create({
            apiVersion: "v1",
            kind: "Secret",
            metadata: { name: `${NAME}-${component}-grpc-tls`, namespace: NS },
            type: "kubernetes.io/tls",
            data: Object.fromEntries(
              Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString("base64")]),
            ),
          } as never);
        }
        await nudge();
        await waitFor("GrpcTLS names the gateway Secret's missing ca.crt", async () => {
          const c = await getCluster();
          const cond = c.status?.conditions?.find((x) => x.type === "GrpcTLS");
          return cond?.message?.includes(`${NAME}-gateway-grpc-tls (no ca.crt)`) &&
            !cond.message.includes("not found")
            ? cond
            : undefined;
        });
        await kubectl([
          "patch",
          "secret",
          `${NAME}-gateway-grpc-tls`,
          "-n",
          NS,
          "--type=merge",
          "-p",
          JSON.stringify({ data: { "ca.crt": Buffer.from(ca.cert).toString("base64") } }),
        ]);
        await nudge();
        expect((await waitGrpcTls("CertificatesReady")).status).toBe("True");
        // Stats reached the TLS gateway (the status counts its connections), with the operator's token.
        await waitFor("status counts the TLS gateway's connections", async () => {
          const c = await getCluster();
          return c.status?.connections === 21 || undefined;
        });
        expect(farm.authorizations.length).toBeGreaterThan(0);
        expect(farm.authorizations.every((a) => a.startsWith("Bearer "))).toBe(true);
      } finally {
        await farm.stop();
      }
    }),
    180_000,
  );
});
