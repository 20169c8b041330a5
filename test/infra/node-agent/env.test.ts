import type { V1Container, V1Pod } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import {
  type EnvObjects,
  envReferences,
  expandCommandAndArgs,
  expandVars,
  fieldRefValue,
  kubernetesServiceEnv,
  type PodRuntime,
  parseQuantity,
  resolveEnv,
  resourceFieldValue,
} from "./env.js";

const b64 = (s: string) => Buffer.from(s, "utf8").toString("base64");

const pod: V1Pod = {
  metadata: {
    name: "web-1",
    namespace: "shop",
    uid: "uid-123",
    labels: { app: "web", tier: "front" },
    annotations: { "example.com/note": 'say "hi"' },
  },
  spec: { nodeName: "agent-0", serviceAccountName: "web-sa", containers: [] },
};
const runtime: PodRuntime = {
  podIPs: ["127.245.0.7"],
  hostIPs: ["127.0.0.1"],
  nodeAllocatable: { cpu: "8", memory: "16Gi", "ephemeral-storage": "100Gi" },
};
const objects: EnvObjects = {
  configMaps: new Map([
    ["cfg", { data: { MODE: "fast", LEVEL: "3", "bad=key": "x" } }],
    ["other", { data: { MODE: "slow", EXTRA: "yes" } }],
  ]),
  secrets: new Map([["creds", { data: { password: b64("s3cret"), MODE: b64("from-secret") } }]]),
};

function env(container: Partial<V1Container>, serviceEnv: Record<string, string> = {}) {
  const r = resolveEnv(pod, { name: "c", ...container }, objects, runtime, serviceEnv);
  if (!r.ok) throw new Error(r.message);
  return r.env;
}

describe("$(VAR) expansion", () => {
  const vars: Record<string, string> = { A: "1", B: "two", EMPTY: "" };
  const lookup = (n: string) => vars[n];
  it.each([
    ["$(A)", "1"],
    ["x$(A)y$(B)z", "x1ytwoz"],
    ["$(EMPTY)|", "|"],
    ["$$(A)", "$(A)"], // escaped: the reference is not expanded
    ["$$", "$"],
    ["$$$$", "$$"],
    ["$(UNDEFINED)", "$(UNDEFINED)"], // unresolved references stay as they are
    ["$(A", "$(A"], // no closing paren
    ["$A", "$A"], // not a reference
    ["a$", "a$"], // trailing operator
    ["$()", "$()"],
    ["$(A)$(B)", "1two"],
    ["$$$(A)", "$1"],
  ])("%s → %s", (input, want) => {
    expect(expandVars(input, lookup)).toBe(want);
  });

  it("expands against earlier env only, in order", () => {
    const e = env({
      env: [
        { name: "LATER_REF", value: "<$(FIRST)>" }, // FIRST is not defined yet
        { name: "FIRST", value: "one" },
        { name: "SECOND", value: "$(FIRST)-two" },
        { name: "ADDR", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } },
        { name: "LISTEN", value: "$(ADDR):9090" },
      ],
    });
    expect(e.LATER_REF).toBe("<$(FIRST)>");
    expect(e.SECOND).toBe("one-two");
    expect(e.LISTEN).toBe("127.245.0.7:9090");
  });

  it("expands against envFrom and service variables, never valueFrom values", () => {
    const e = env(
      {
        envFrom: [{ configMapRef: { name: "cfg" } }],
        env: [
          { name: "M", value: "$(MODE)/$(KUBERNETES_SERVICE_HOST)" },
          { name: "RAW", valueFrom: { configMapKeyRef: { name: "other", key: "EXTRA" } } },
          {
            name: "LITERAL",
            valueFrom: { fieldRef: { fieldPath: "metadata.annotations['example.com/note']" } },
          },
        ],
      },
      { KUBERNETES_SERVICE_HOST: "10.96.0.1" },
    );
    expect(e.M).toBe("fast/10.96.0.1");
    expect(e.LITERAL).toBe('say "hi"');
  });

  it("expands command and args against the final environment", () => {
    const out = expandCommandAndArgs(
      { command: ["/bin/run", "$(A)"], args: ["--addr=$(B):1", "$$(A)", "$(NOPE)"] },
      { A: "1", B: "two" },
    );
    expect(out).toEqual({ command: ["/bin/run", "1"], args: ["--addr=two:1", "$(A)", "$(NOPE)"] });
  });
});

describe("fieldRef", () => {
  it.each([
    ["metadata.name", "web-1"],
    ["metadata.namespace", "shop"],
    ["metadata.uid", "uid-123"],
    ["metadata.labels['app']", "web"],
    ["metadata.labels['missing']", ""],
    ["metadata.annotations['example.com/note']", 'say "hi"'],
    ["spec.nodeName", "agent-0"],
    ["spec.serviceAccountName", "web-sa"],
    ["status.podIP", "127.245.0.7"],
    ["status.podIPs", "127.245.0.7"],
    ["status.hostIP", "127.0.0.1"],
    ["status.hostIPs", "127.0.0.1"],
  ])("%s = %s", (path, want) => {
    expect(fieldRefValue(pod, runtime, path)).toEqual({ ok: true, value: want });
  });

  it("formats whole label maps for volumes only", () => {
    expect(fieldRefValue(pod, runtime, "metadata.labels").ok).toBe(false);
    expect(fieldRefValue(pod, runtime, "metadata.labels", true)).toEqual({
      ok: true,
      value: 'app="web"\ntier="front"',
    });
  });

  it("rejects unknown paths", () => {
    const r = resolveEnv(
      pod,
      { name: "c", env: [{ name: "X", valueFrom: { fieldRef: { fieldPath: "spec.bogus" } } }] },
      objects,
      runtime,
    );
    expect(r.ok).toBe(false);
  });
});

describe("envFrom and references", () => {
  it("applies prefixes, later sources override earlier ones, env overrides envFrom", () => {
    const r = resolveEnv(
      pod,
      {
        name: "c",
        envFrom: [
          { configMapRef: { name: "cfg" } },
          { configMapRef: { name: "other" } }, // MODE=slow overrides cfg's MODE=fast
          { secretRef: { name: "creds" }, prefix: "S_" },
        ],
        env: [{ name: "LEVEL", value: "9" }],
      },
      objects,
      runtime,
    );
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.env).toMatchObject({
      MODE: "slow",
      EXTRA: "yes",
      LEVEL: "9",
      S_password: "s3cret",
      S_MODE: "from-secret",
    });
    // "bad=key" is not a valid name: skipped, and said so.
    expect(Object.keys(r.env)).not.toContain("bad=key");
    expect(r.warnings.join()).toContain("bad=key");
  });

  it("resolves configMapKeyRef and secretKeyRef", () => {
    const e = env({
      env: [
        { name: "PW", valueFrom: { secretKeyRef: { name: "creds", key: "password" } } },
        { name: "LVL", valueFrom: { configMapKeyRef: { name: "cfg", key: "LEVEL" } } },
      ],
    });
    expect(e).toMatchObject({ PW: "s3cret", LVL: "3" });
  });

  it("leaves out optional references that do not resolve", () => {
    const e = env({
      envFrom: [
        { configMapRef: { name: "nope", optional: true } },
        { secretRef: { name: "nope", optional: true } },
      ],
      env: [
        { name: "A", valueFrom: { configMapKeyRef: { name: "nope", key: "k", optional: true } } },
        { name: "B", valueFrom: { configMapKeyRef: { name: "cfg", key: "missing", optional: true } } },
        { name: "C", valueFrom: { secretKeyRef: { name: "creds", key: "missing", optional: true } } },
        { name: "D", value: "kept" },
      ],
    });
    expect(e).toEqual({ D: "kept" });
  });

  it.each([
    [{ envFrom: [{ configMapRef: { name: "nope" } }] }, 'configmap "nope" not found'],
    [{ envFrom: [{ secretRef: { name: "nope" } }] }, 'secret "nope" not found'],
    [
      { env: [{ name: "A", valueFrom: { configMapKeyRef: { name: "cfg", key: "missing" } } }] },
      "couldn't find key missing in ConfigMap shop/cfg",
    ],
    [
      { env: [{ name: "A", valueFrom: { secretKeyRef: { name: "creds", key: "missing" } } }] },
      "couldn't find key missing in Secret shop/creds",
    ],
  ] as Array<[Partial<V1Container>, string]>)(
    "fails on a missing non-optional reference: %j",
    (c, message) => {
      expect(resolveEnv(pod, { name: "c", ...c }, objects, runtime)).toEqual({ ok: false, message });
    },
  );

  it("adds service variables only for names still undefined", () => {
    const svc = kubernetesServiceEnv("10.96.0.1", 443);
    const e = env({ env: [{ name: "KUBERNETES_SERVICE_PORT", value: "mine" }] }, svc);
    expect(e.KUBERNETES_SERVICE_HOST).toBe("10.96.0.1");
    expect(e.KUBERNETES_PORT_443_TCP_ADDR).toBe("10.96.0.1");
    expect(e.KUBERNETES_SERVICE_PORT).toBe("mine");
  });

  it("names what to fetch", () => {
    const refs = envReferences({
      envFrom: [{ configMapRef: { name: "a" } }, { secretRef: { name: "s1" } }],
      env: [
        { name: "X", valueFrom: { configMapKeyRef: { name: "b", key: "k" } } },
        { name: "Y", valueFrom: { secretKeyRef: { name: "s2", key: "k" } } },
      ],
    });
    expect([...refs.configMaps]).toEqual(["a", "b"]);
    expect([...refs.secrets]).toEqual(["s1", "s2"]);
  });
});

describe("resourceFieldRef", () => {
  const c = { name: "c", resources: { limits: { cpu: "500m", memory: "128Mi" }, requests: { cpu: "100m" } } };
  it.each([
    ["limits.cpu", undefined, "1"], // rounded up to whole cores
    ["limits.cpu", "1m", "500"],
    ["requests.cpu", "1m", "100"],
    ["limits.memory", undefined, "134217728"],
    ["limits.memory", "1Mi", "128"],
    ["requests.memory", undefined, "0"], // unset request
    ["limits.ephemeral-storage", "1Gi", "100"], // unset limit: node allocatable
  ])("%s / %s = %s", (resource, divisor, want) => {
    expect(resourceFieldValue(c, resource, divisor, runtime.nodeAllocatable)).toEqual({
      ok: true,
      value: want,
    });
  });

  it("parses quantities", () => {
    expect(parseQuantity("1.5Gi")).toBe(1.5 * 2 ** 30);
    expect(parseQuantity("2k")).toBe(2000);
    expect(parseQuantity("1e3")).toBe(1000);
    expect(parseQuantity("250m")).toBe(0.25);
    expect(() => parseQuantity("lots")).toThrow();
  });

  it("resolves through env, for another container too", () => {
    const p: V1Pod = {
      ...pod,
      spec: { ...pod.spec!, containers: [{ name: "side", resources: { limits: { cpu: "2" } } }] },
    };
    const r = resolveEnv(
      p,
      {
        name: "main",
        env: [
          { name: "MINE", valueFrom: { resourceFieldRef: { resource: "limits.cpu" } } },
          {
            name: "SIDE",
            valueFrom: { resourceFieldRef: { resource: "limits.cpu", containerName: "side" } },
          },
        ],
      },
      objects,
      runtime,
    );
    expect(r).toMatchObject({ ok: true, env: { MINE: "8", SIDE: "2" } });
  });
});
