/**
 * A small REST client for the Kubernetes API: the handful of verbs the controller needs, with
 * server-side apply and subresources, over node:https with the credentials of a client-node
 * KubeConfig (kubeconfig file or in-cluster ServiceAccount, whose rotated token is re-read on every
 * request). Why not client-node's generated APIs: the controller addresses objects by path (apply to
 * `/status`, JSON patches of finalizers, pods by IP) and needs the API server's Status on failure,
 * which the generated clients hide behind per-type methods and opaque errors.
 */
import { request as httpsRequest, type RequestOptions } from "node:https";
import type { KubeConfig, KubernetesObject } from "@kubernetes/client-node";
import { context, inSpan, SpanKind, trace, tracing } from "../../internal/lib/tracing.js";

/** The one field manager for every server-side apply: the operator owns what it applies, nothing else. */
export const FIELD_MANAGER = "switchboard-operator";

/** `path` of a write that names the operator as its field manager (every write does). */
const managed = (path: string) => `${path}?fieldManager=${FIELD_MANAGER}`;

const REQUEST_TIMEOUT_MS = 30_000;

export class KubeApiError extends Error {
  constructor(
    readonly method: string,
    readonly path: string,
    readonly status: number,
    readonly reason: string,
    readonly detail: string,
  ) {
    super(`${method} ${path}: ${status} ${reason}: ${detail}`);
    this.name = "KubeApiError";
  }
}

export const isNotFound = (err: unknown): boolean => err instanceof KubeApiError && err.status === 404;
export const isConflict = (err: unknown): boolean => err instanceof KubeApiError && err.status === 409;

export interface ObjectRef {
  apiVersion: string;
  kind: string;
  namespace?: string | undefined;
  name: string;
}

export interface ListResult<T> {
  items: T[];
  metadata: { resourceVersion?: string };
}

/** Plural resource names of the kinds the operator touches (no discovery round trips). */
const RESOURCES: Record<string, string> = {
  Certificate: "certificates",
  ConfigMap: "configmaps",
  Deployment: "deployments",
  Event: "events",
  Lease: "leases",
  NetworkPolicy: "networkpolicies",
  Namespace: "namespaces",
  Pod: "pods",
  PodDisruptionBudget: "poddisruptionbudgets",
  PodMonitor: "podmonitors",
  Secret: "secrets",
  Service: "services",
  ServiceAccount: "serviceaccounts",
  StatefulSet: "statefulsets",
  ChatCluster: "chatclusters",
  ClusterRoleBinding: "clusterrolebindings",
};

/** /api/v1/namespaces/ns/pods, /apis/apps/v1/namespaces/ns/deployments/name, … */
export function resourcePath(ref: Omit<ObjectRef, "name"> & { name?: string | undefined }): string {
  const plural = RESOURCES[ref.kind];
  if (!plural) throw new Error(`kube client: unknown kind ${ref.kind}`);
  const base = ref.apiVersion.includes("/") ? `/apis/${ref.apiVersion}` : `/api/${ref.apiVersion}`;
  const ns = ref.namespace ? `/namespaces/${encodeURIComponent(ref.namespace)}` : "";
  const name = ref.name ? `/${encodeURIComponent(ref.name)}` : "";
  return `${base}${ns}/${plural}${name}`;
}

export class KubeClient {
  constructor(private readonly kubeConfig: KubeConfig) {}

  async get<T>(ref: ObjectRef): Promise<T> {
    return (await this.request("GET", resourcePath(ref))) as T;
  }

  /** The object, or undefined when it does not exist. */
  async find<T>(ref: ObjectRef): Promise<T | undefined> {
    try {
      return await this.get<T>(ref);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async list<T>(
    ref: { apiVersion: string; kind: string; namespace?: string | undefined },
    labelSelector?: string,
  ): Promise<ListResult<T>> {
    const query = labelSelector ? `?labelSelector=${encodeURIComponent(labelSelector)}` : "";
    return (await this.request("GET", `${resourcePath(ref)}${query}`)) as ListResult<T>;
  }

  /**
   * Server-side apply of `obj` (or of its status with subresource "status"), forcing conflicts: the
   * operator is the only writer of what it applies, so another manager's value is drift to correct.
   */
  async apply<T extends KubernetesObject>(obj: T, subresource?: "status"): Promise<T> {
    const ref = refOf(obj);
    const target = subresource ? `${resourcePath(ref)}/${subresource}` : resourcePath(ref);
    const path = `${managed(target)}&force=true`;
    return (await this.request("PATCH", path, obj, "application/apply-patch+yaml")) as T;
  }

  /**
   * Whether the API server serves resource `plural` in `apiVersion` (a CRD's kind exists only once
   * the CRD is installed and established). API discovery is readable by every authenticated user
   * (the system:discovery role): no RBAC rule is needed.
   */
  async serves(apiVersion: string, plural: string): Promise<boolean> {
    const path = apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
    try {
      const list = (await this.request("GET", path)) as { resources?: Array<{ name: string }> };
      return list.resources?.some((r) => r.name === plural) ?? false;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  async jsonPatch<T>(ref: ObjectRef, ops: unknown[]): Promise<T> {
    return (await this.request("PATCH", managed(resourcePath(ref)), ops, "application/json-patch+json")) as T;
  }

  async mergePatch<T>(ref: ObjectRef, patch: unknown): Promise<T> {
    return (await this.request(
      "PATCH",
      managed(resourcePath(ref)),
      patch,
      "application/merge-patch+json",
    )) as T;
  }

  async create<T extends KubernetesObject>(obj: T): Promise<T> {
    const { name: _name, ...collection } = refOf(obj);
    return (await this.request("POST", managed(resourcePath(collection)), obj)) as T;
  }

  /** PUT: replaces the object; its metadata.resourceVersion makes it conditional (409 when stale). */
  async replace<T extends KubernetesObject>(obj: T): Promise<T> {
    return (await this.request("PUT", managed(resourcePath(refOf(obj))), obj)) as T;
  }

  /** Deletes with background propagation; a missing object is not an error. */
  async delete(ref: ObjectRef): Promise<void> {
    try {
      await this.request("DELETE", resourcePath(ref), { propagationPolicy: "Background" });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  async request(
    method: string,
    path: string,
    body?: unknown,
    contentType = "application/json",
  ): Promise<unknown> {
    // Within a traced reconcile, every API call is a client span of it.
    if (tracing.on && trace.getSpan(context.active()))
      return inSpan(
        method,
        {
          kind: SpanKind.CLIENT,
          attributes: { "http.request.method": method, "url.path": path.split("?")[0] ?? path },
        },
        () => this.send(method, path, body, contentType),
      );
    return this.send(method, path, body, contentType);
  }

  private async send(method: string, path: string, body: unknown, contentType: string): Promise<unknown> {
    const cluster = this.kubeConfig.getCurrentCluster();
    if (!cluster) throw new Error("kube client: the kubeconfig has no current cluster");
    const url = new URL(path, cluster.server);
    const options: RequestOptions = {
      method,
      hostname: url.hostname,
      port: url.port || 443,
      path: `${url.pathname}${url.search}`,
      headers: { Accept: "application/json" },
      timeout: REQUEST_TIMEOUT_MS,
    };
    await this.kubeConfig.applyToHTTPSOptions(options);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    if (payload) {
      options.headers = { ...options.headers, "Content-Type": contentType, "Content-Length": payload.length };
    }
    const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = httpsRequest(options, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }),
        );
        res.on("error", reject);
      });
      req.on("timeout", () => req.destroy(new Error(`timed out after ${REQUEST_TIMEOUT_MS} ms`)));
      req.on("error", (err) => reject(new Error(`${method} ${path}: ${err.message}`, { cause: err })));
      req.end(payload);
    });
    if (status >= 200 && status < 300) return text ? JSON.parse(text) : undefined;
    let reason = "";
    let message = text.slice(0, 500);
    try {
      const s = JSON.parse(text) as { reason?: string; message?: string };
      reason = s.reason ?? "";
      message = s.message ?? message;
    } catch {
      // not a Status object: keep the raw text
    }
    throw new KubeApiError(method, path, status, reason, message);
  }
}

export function refOf(obj: KubernetesObject): ObjectRef {
  if (!obj.apiVersion || !obj.kind || !obj.metadata?.name)
    throw new Error("kube client: object without apiVersion, kind or metadata.name");
  return {
    apiVersion: obj.apiVersion,
    kind: obj.kind,
    namespace: obj.metadata.namespace,
    name: obj.metadata.name,
  };
}
