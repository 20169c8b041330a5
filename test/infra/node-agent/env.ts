/**
 * A container's environment, resolved the way the kubelet does it (pkg/kubelet/kubelet_pods.go,
 * makeEnvironmentVariables, and the $(VAR) expansion of third_party/forked/golang/expansion).
 * Pure: the ConfigMaps and Secrets a container refers to are fetched by the caller first
 * (envReferences names them), so every rule here is unit-tested without an API server.
 *
 * Order, as in the kubelet:
 *   1. envFrom sources in order (later sources override earlier ones; keys get the prefix);
 *   2. env in order: `value` has its $(VAR) references expanded against everything defined so far
 *      (envFrom, earlier env, then the service variables); valueFrom values are never expanded;
 *      a later entry overrides an envFrom key of the same name;
 *   3. the service variables (KUBERNETES_SERVICE_HOST, …) for names still undefined.
 * A missing ConfigMap/Secret/key is an error unless the reference is optional, in which case the
 * variable (or the whole envFrom source) is left out.
 */
import type { V1Container, V1Pod } from "@kubernetes/client-node";

/** The `data` of a ConfigMap (plain) or Secret (base64, as the API returns it). */
export interface KeyValues {
  data?: Record<string, string> | undefined;
}

export interface EnvObjects {
  /** ConfigMaps by name in the Pod's namespace; a name that is not a key does not exist. */
  configMaps: ReadonlyMap<string, KeyValues>;
  /** Secrets by name in the Pod's namespace (data base64-encoded). */
  secrets: ReadonlyMap<string, KeyValues>;
}

/** What the node knows about the Pod that its spec and metadata do not say. */
export interface PodRuntime {
  podIPs: string[];
  hostIPs: string[];
  /** The node's allocatable resources: what limits.* mean when a container sets none. */
  nodeAllocatable: Record<string, string>;
}

export type EnvResult =
  | {
      ok: true;
      env: Record<string, string>;
      /** Things a kubelet reports as events: envFrom keys skipped as invalid names. */
      warnings: string[];
    }
  | { ok: false; message: string };

// ---------------------------------------------------------------------------------------------
// $(VAR) expansion

/**
 * Expands $(VAR) in `input`: `lookup` gives the value of a defined variable. `$$` is an escaped `$`;
 * an undefined variable, a `$(` without `)` and a `$` before any other character are left as they
 * are. (The same byte-level rules as the kubelet's forked golang expansion.)
 */
export function expandVars(input: string, lookup: (name: string) => string | undefined): string {
  let out = "";
  let checkpoint = 0;
  for (let cursor = 0; cursor < input.length; cursor++) {
    if (input[cursor] !== "$" || cursor + 1 >= input.length) continue;
    out += input.slice(checkpoint, cursor);
    const rest = input.slice(cursor + 1);
    let advance = 1;
    if (rest[0] === "$") {
      out += "$";
    } else if (rest[0] === "(") {
      const close = rest.indexOf(")");
      if (close < 0) out += "$(";
      else {
        const name = rest.slice(1, close);
        out += lookup(name) ?? `$(${name})`;
        advance = close + 1;
      }
    } else {
      out += `$${rest[0]}`;
    }
    cursor += advance;
    checkpoint = cursor + 1;
  }
  return out + input.slice(checkpoint);
}

/** The container's command and args with $(VAR) expanded against its final environment. */
export function expandCommandAndArgs(
  container: Pick<V1Container, "command" | "args">,
  env: Record<string, string>,
): { command: string[]; args: string[] } {
  const lookup = (name: string) => (Object.hasOwn(env, name) ? env[name] : undefined);
  return {
    command: (container.command ?? []).map((s) => expandVars(s, lookup)),
    args: (container.args ?? []).map((s) => expandVars(s, lookup)),
  };
}

// ---------------------------------------------------------------------------------------------
// Downward API: fieldRef and resourceFieldRef

/** Names valid since the RelaxedEnvironmentVariableValidation feature (GA in 1.34): printable ASCII but `=`. */
export function isValidEnvName(name: string): boolean {
  return name.length > 0 && /^[\x20-\x3c\x3e-\x7e]+$/.test(name);
}

/** Go's %q of a plain string is close enough to JSON's quoting for label and annotation values. */
function formatMap(map: Record<string, string> | undefined): string {
  return Object.keys(map ?? {})
    .sort()
    .map((k) => `${k}=${JSON.stringify(map![k])}`)
    .join("\n");
}

/**
 * The value of a fieldRef path. `wholeMaps` allows metadata.labels / metadata.annotations without a
 * key (downwardAPI volumes only), formatted one `key="value"` per line as the kubelet writes them.
 */
export function fieldRefValue(
  pod: V1Pod,
  runtime: Pick<PodRuntime, "podIPs" | "hostIPs">,
  fieldPath: string,
  wholeMaps = false,
): { ok: true; value: string } | { ok: false; message: string } {
  const ok = (value: string | undefined) => ({ ok: true as const, value: value ?? "" });
  const subscript = /^metadata\.(labels|annotations)\['(.*)'\]$/.exec(fieldPath);
  if (subscript) {
    const map = subscript[1] === "labels" ? pod.metadata?.labels : pod.metadata?.annotations;
    return ok(map?.[subscript[2]!]);
  }
  switch (fieldPath) {
    case "metadata.name":
      return ok(pod.metadata?.name);
    case "metadata.namespace":
      return ok(pod.metadata?.namespace);
    case "metadata.uid":
      return ok(pod.metadata?.uid);
    case "spec.nodeName":
      return ok(pod.spec?.nodeName);
    case "spec.serviceAccountName":
      return ok(pod.spec?.serviceAccountName);
    case "status.podIP":
      return ok(runtime.podIPs[0]);
    case "status.podIPs":
      return ok(runtime.podIPs.join(","));
    case "status.hostIP":
      return ok(runtime.hostIPs[0]);
    case "status.hostIPs":
      return ok(runtime.hostIPs.join(","));
    case "metadata.labels":
    case "metadata.annotations":
      if (wholeMaps)
        return ok(
          formatMap(fieldPath === "metadata.labels" ? pod.metadata?.labels : pod.metadata?.annotations),
        );
      break;
  }
  return { ok: false, message: `unsupported fieldRef fieldPath ${JSON.stringify(fieldPath)}` };
}

const BINARY: Record<string, number> = {
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};
const DECIMAL: Record<string, number> = {
  n: 1e-9,
  u: 1e-6,
  m: 1e-3,
  "": 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
};

/** A resource.Quantity as a float ("500m" → 0.5, "128Mi" → 134217728, "1e3" → 1000). */
export function parseQuantity(q: string): number {
  const m = /^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$/.exec(
    q.trim(),
  );
  if (!m) throw new Error(`not a quantity: ${JSON.stringify(q)}`);
  const n = Number(m[1]);
  if (m[2]) return n * 10 ** Number(m[2].slice(1));
  const suffix = m[3] ?? "";
  return n * (BINARY[suffix] ?? DECIMAL[suffix]!);
}

/**
 * resourceFieldRef: limits.* / requests.* of `container`, divided by the divisor and rounded up
 * (cpu in millicores first, as the kubelet's MilliValue does). A limit the container does not set
 * is the node's allocatable amount; an unset request is 0.
 */
export function resourceFieldValue(
  container: Pick<V1Container, "resources" | "name">,
  resource: string,
  divisor: string | undefined,
  nodeAllocatable: Record<string, string>,
): { ok: true; value: string } | { ok: false; message: string } {
  const m = /^(limits|requests)\.(cpu|memory|ephemeral-storage)$/.exec(resource);
  if (!m) return { ok: false, message: `unsupported resourceFieldRef resource ${JSON.stringify(resource)}` };
  const [, kind, name] = m as unknown as [string, "limits" | "requests", string];
  const set = container.resources?.[kind]?.[name];
  const raw = set ?? (kind === "limits" ? nodeAllocatable[name] : undefined) ?? "0";
  try {
    const amount = parseQuantity(raw);
    const div = parseQuantity(divisor || "1");
    if (!(div > 0)) return { ok: false, message: `resourceFieldRef divisor ${divisor} must be positive` };
    if (name === "cpu") {
      // Small epsilons: a float like 0.1 * 1000 must not round up to 101.
      const milli = Math.ceil(amount * 1000 - 1e-6);
      const divMilli = Math.ceil(div * 1000 - 1e-6);
      return { ok: true, value: String(Math.ceil(milli / divMilli - 1e-9)) };
    }
    return { ok: true, value: String(Math.ceil(Math.ceil(amount - 1e-9) / div - 1e-9)) };
  } catch (err) {
    return { ok: false, message: `container ${container.name}: ${(err as Error).message}` };
  }
}

// ---------------------------------------------------------------------------------------------
// The environment

/** The ConfigMaps and Secrets the container's env/envFrom name, for the caller to fetch. */
export function envReferences(container: Pick<V1Container, "env" | "envFrom">): {
  configMaps: Set<string>;
  secrets: Set<string>;
} {
  const configMaps = new Set<string>();
  const secrets = new Set<string>();
  for (const src of container.envFrom ?? []) {
    if (src.configMapRef?.name) configMaps.add(src.configMapRef.name);
    if (src.secretRef?.name) secrets.add(src.secretRef.name);
  }
  for (const v of container.env ?? []) {
    if (v.valueFrom?.configMapKeyRef?.name) configMaps.add(v.valueFrom.configMapKeyRef.name);
    if (v.valueFrom?.secretKeyRef?.name) secrets.add(v.valueFrom.secretKeyRef.name);
  }
  return { configMaps, secrets };
}

function decodeSecret(data: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(data ?? {})) out[k] = Buffer.from(v, "base64").toString("utf8");
  return out;
}

export function resolveEnv(
  pod: V1Pod,
  container: V1Container,
  objects: EnvObjects,
  runtime: PodRuntime,
  serviceEnv: Record<string, string> = {},
): EnvResult {
  const ns = pod.metadata?.namespace ?? "";
  const env = new Map<string, string>();
  const warnings: string[] = [];
  const fail = (message: string): EnvResult => ({ ok: false, message });

  for (const src of container.envFrom ?? []) {
    const prefix = src.prefix ?? "";
    let data: Record<string, string>;
    let what: string;
    if (src.configMapRef) {
      const cm = objects.configMaps.get(src.configMapRef.name ?? "");
      what = `ConfigMap ${ns}/${src.configMapRef.name}`;
      if (!cm) {
        if (src.configMapRef.optional) continue;
        return fail(`configmap ${JSON.stringify(src.configMapRef.name)} not found`);
      }
      data = cm.data ?? {};
    } else if (src.secretRef) {
      const secret = objects.secrets.get(src.secretRef.name ?? "");
      what = `Secret ${ns}/${src.secretRef.name}`;
      if (!secret) {
        if (src.secretRef.optional) continue;
        return fail(`secret ${JSON.stringify(src.secretRef.name)} not found`);
      }
      data = decodeSecret(secret.data);
    } else continue;
    const invalid: string[] = [];
    for (const [k, v] of Object.entries(data)) {
      const name = prefix + k;
      if (!isValidEnvName(name)) invalid.push(name);
      else env.set(name, v);
    }
    if (invalid.length > 0)
      warnings.push(
        `keys [${invalid.sort().join(", ")}] from the EnvFrom ${what} were skipped since they are invalid environment variable names`,
      );
  }

  const lookup = (name: string) =>
    env.get(name) ?? (Object.hasOwn(serviceEnv, name) ? serviceEnv[name] : undefined);
  for (const v of container.env ?? []) {
    const from = v.valueFrom;
    if (!from) {
      env.set(v.name, expandVars(v.value ?? "", lookup));
      continue;
    }
    if (from.fieldRef) {
      const r = fieldRefValue(pod, runtime, from.fieldRef.fieldPath);
      if (!r.ok) return fail(`env ${v.name}: ${r.message}`);
      env.set(v.name, r.value);
    } else if (from.resourceFieldRef) {
      const target = from.resourceFieldRef.containerName
        ? pod.spec?.containers.find((c) => c.name === from.resourceFieldRef!.containerName)
        : container;
      if (!target) return fail(`env ${v.name}: no container ${from.resourceFieldRef.containerName}`);
      const r = resourceFieldValue(
        target,
        from.resourceFieldRef.resource,
        from.resourceFieldRef.divisor,
        runtime.nodeAllocatable,
      );
      if (!r.ok) return fail(`env ${v.name}: ${r.message}`);
      env.set(v.name, r.value);
    } else if (from.configMapKeyRef) {
      const ref = from.configMapKeyRef;
      const cm = objects.configMaps.get(ref.name ?? "");
      if (!cm) {
        if (ref.optional) continue;
        return fail(`configmap ${JSON.stringify(ref.name)} not found`);
      }
      const value = cm.data?.[ref.key];
      if (value === undefined) {
        if (ref.optional) continue;
        return fail(`couldn't find key ${ref.key} in ConfigMap ${ns}/${ref.name}`);
      }
      env.set(v.name, value);
    } else if (from.secretKeyRef) {
      const ref = from.secretKeyRef;
      const secret = objects.secrets.get(ref.name ?? "");
      if (!secret) {
        if (ref.optional) continue;
        return fail(`secret ${JSON.stringify(ref.name)} not found`);
      }
      const raw = secret.data?.[ref.key];
      if (raw === undefined) {
        if (ref.optional) continue;
        return fail(`couldn't find key ${ref.key} in Secret ${ns}/${ref.name}`);
      }
      env.set(v.name, Buffer.from(raw, "base64").toString("utf8"));
    } else {
      return fail(`env ${v.name}: unsupported valueFrom ${JSON.stringify(Object.keys(from))}`);
    }
  }

  for (const [k, v] of Object.entries(serviceEnv)) if (!env.has(k)) env.set(k, v);
  return { ok: true, env: Object.fromEntries(env), warnings };
}

/**
 * The variables a kubelet derives from the `kubernetes` Service of the default namespace, from its
 * ClusterIP and port (the Docker-links style variables of other Services are not generated: a gap,
 * see README).
 */
export function kubernetesServiceEnv(host: string, port: number): Record<string, string> {
  const p = String(port);
  const tcp = `KUBERNETES_PORT_${p}_TCP`;
  return {
    KUBERNETES_SERVICE_HOST: host,
    KUBERNETES_SERVICE_PORT: p,
    KUBERNETES_SERVICE_PORT_HTTPS: p,
    KUBERNETES_PORT: `tcp://${host}:${p}`,
    [tcp]: `tcp://${host}:${p}`,
    [`${tcp}_PROTO`]: "tcp",
    [`${tcp}_PORT`]: p,
    [`${tcp}_ADDR`]: host,
  };
}
