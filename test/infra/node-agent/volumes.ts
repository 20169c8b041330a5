/**
 * Volumes: the Pod's volumes materialised as directories under <state>/pods/<uid>/volumes/<name>,
 * plus the Pod's own /etc/resolv.conf and /etc/hosts, and the list of bind mounts each container
 * gets (supervisor.ts performs them inside the container's mount namespace).
 *
 * Supported: emptyDir (on disk, whatever the medium; sizeLimit not enforced), secret, configMap,
 * downwardAPI, projected (serviceAccountToken, secret, configMap, downwardAPI) and hostPath. The
 * files are written once, when the Pod starts: later changes to a Secret or ConfigMap, and token
 * expiry, are not followed (see README). Anything else makes the Pod wait with a FailedMount event.
 */
import { chmodSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, normalize } from "node:path";
import type {
  V1ConfigMap,
  V1Container,
  V1DownwardAPIVolumeFile,
  V1KeyToPath,
  V1Pod,
  V1Secret,
  V1Volume,
} from "@kubernetes/client-node";
import { fieldRefValue, type PodRuntime, resourceFieldValue } from "./env.js";
import type { Mount } from "./supervisor.js";

/** Where volume contents come from: the API server, through the agent. */
export interface VolumeSources {
  configMap(ns: string, name: string): Promise<V1ConfigMap | undefined>;
  secret(ns: string, name: string): Promise<V1Secret | undefined>;
  serviceAccountToken(
    pod: V1Pod,
    audience: string | undefined,
    expirationSeconds: number | undefined,
  ): Promise<string>;
}

export class VolumeError extends Error {}

/** One file of a volume: path relative to the volume root, content, mode. */
interface VolumeFile {
  path: string;
  content: Buffer;
  mode: number;
}

const DEFAULT_MODE = 0o644;

/** An item path must stay inside its volume (the API validates this too; we do not trust it blindly). */
function safeRelative(path: string): string {
  const p = normalize(path);
  if (p.startsWith("/") || p === ".." || p.startsWith("../") || p === ".")
    throw new VolumeError(`volume item path ${JSON.stringify(path)} escapes its volume`);
  return p;
}

/** Keys → files: all keys, or the listed items (a missing listed key is an error unless optional). */
function keyFiles(
  what: string,
  data: Record<string, Buffer>,
  items: V1KeyToPath[] | undefined,
  defaultMode: number,
  optional: boolean,
): VolumeFile[] {
  if (!items || items.length === 0)
    return Object.entries(data).map(([k, v]) => ({ path: safeRelative(k), content: v, mode: defaultMode }));
  const files: VolumeFile[] = [];
  for (const item of items) {
    const content = data[item.key];
    if (content === undefined) {
      if (optional) continue;
      throw new VolumeError(`couldn't find key ${item.key} in ${what}`);
    }
    files.push({ path: safeRelative(item.path), content, mode: item.mode ?? defaultMode });
  }
  return files;
}

function configMapData(cm: V1ConfigMap): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  for (const [k, v] of Object.entries(cm.data ?? {})) out[k] = Buffer.from(v, "utf8");
  for (const [k, v] of Object.entries(cm.binaryData ?? {})) out[k] = Buffer.from(v, "base64");
  return out;
}

function secretData(secret: V1Secret): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  for (const [k, v] of Object.entries(secret.data ?? {})) out[k] = Buffer.from(v, "base64");
  return out;
}

function downwardFiles(
  pod: V1Pod,
  runtime: PodRuntime,
  items: V1DownwardAPIVolumeFile[] | undefined,
  defaultMode: number,
): VolumeFile[] {
  return (items ?? []).map((item) => {
    let value: string;
    if (item.fieldRef) {
      const r = fieldRefValue(pod, runtime, item.fieldRef.fieldPath, true);
      if (!r.ok) throw new VolumeError(r.message);
      value = r.value;
    } else if (item.resourceFieldRef) {
      const ref = item.resourceFieldRef;
      const c = pod.spec?.containers.find((x) => x.name === ref.containerName);
      if (!c) throw new VolumeError(`downwardAPI ${item.path}: no container ${ref.containerName}`);
      const r = resourceFieldValue(c, ref.resource, ref.divisor, runtime.nodeAllocatable);
      if (!r.ok) throw new VolumeError(r.message);
      value = r.value;
    } else throw new VolumeError(`downwardAPI ${item.path}: neither fieldRef nor resourceFieldRef`);
    return {
      path: safeRelative(item.path),
      content: Buffer.from(value, "utf8"),
      mode: item.mode ?? defaultMode,
    };
  });
}

/** The files of one volume, or null for a volume that is a plain directory (emptyDir, hostPath). */
async function volumeFiles(
  pod: V1Pod,
  volume: V1Volume,
  runtime: PodRuntime,
  sources: VolumeSources,
): Promise<VolumeFile[] | null> {
  const ns = pod.metadata?.namespace ?? "default";
  if (volume.emptyDir) return null;
  if (volume.secret) {
    const s = volume.secret;
    const secret = await sources.secret(ns, s.secretName ?? "");
    if (!secret) {
      if (s.optional) return [];
      throw new VolumeError(`secret ${JSON.stringify(s.secretName)} not found`);
    }
    return keyFiles(
      `Secret ${ns}/${s.secretName}`,
      secretData(secret),
      s.items,
      s.defaultMode ?? DEFAULT_MODE,
      !!s.optional,
    );
  }
  if (volume.configMap) {
    const c = volume.configMap;
    const cm = await sources.configMap(ns, c.name ?? "");
    if (!cm) {
      if (c.optional) return [];
      throw new VolumeError(`configmap ${JSON.stringify(c.name)} not found`);
    }
    return keyFiles(
      `ConfigMap ${ns}/${c.name}`,
      configMapData(cm),
      c.items,
      c.defaultMode ?? DEFAULT_MODE,
      !!c.optional,
    );
  }
  if (volume.downwardAPI)
    return downwardFiles(
      pod,
      runtime,
      volume.downwardAPI.items,
      volume.downwardAPI.defaultMode ?? DEFAULT_MODE,
    );
  if (volume.projected) {
    const mode = volume.projected.defaultMode ?? DEFAULT_MODE;
    const files: VolumeFile[] = [];
    for (const src of volume.projected.sources ?? []) {
      if (src.serviceAccountToken) {
        const t = src.serviceAccountToken;
        const token = await sources.serviceAccountToken(pod, t.audience, t.expirationSeconds);
        files.push({ path: safeRelative(t.path), content: Buffer.from(token, "utf8"), mode });
      } else if (src.secret) {
        const s = src.secret;
        const secret = await sources.secret(ns, s.name ?? "");
        if (!secret) {
          if (s.optional) continue;
          throw new VolumeError(`secret ${JSON.stringify(s.name)} not found`);
        }
        files.push(...keyFiles(`Secret ${ns}/${s.name}`, secretData(secret), s.items, mode, !!s.optional));
      } else if (src.configMap) {
        const c = src.configMap;
        const cm = await sources.configMap(ns, c.name ?? "");
        if (!cm) {
          if (c.optional) continue;
          throw new VolumeError(`configmap ${JSON.stringify(c.name)} not found`);
        }
        files.push(...keyFiles(`ConfigMap ${ns}/${c.name}`, configMapData(cm), c.items, mode, !!c.optional));
      } else if (src.downwardAPI) {
        files.push(...downwardFiles(pod, runtime, src.downwardAPI.items, mode));
      } else {
        throw new VolumeError(
          `projected volume ${volume.name}: unsupported source ${Object.keys(src).join(",")}`,
        );
      }
    }
    return files;
  }
  throw new VolumeError(
    `volume ${volume.name}: unsupported type ${Object.keys(volume)
      .filter((k) => k !== "name")
      .join(",")}`,
  );
}

export interface PodDirs {
  /** <state>/pods/<uid> */
  root: string;
  volumes: string;
  etc: string;
}

export function podDirs(stateDir: string, uid: string): PodDirs {
  const root = join(stateDir, "pods", uid);
  return { root, volumes: join(root, "volumes"), etc: join(root, "etc") };
}

/**
 * Writes every volume of the Pod under dirs.volumes and returns the host path of each by name.
 * Throws VolumeError (or an API error) when a volume cannot be made yet: the caller retries.
 */
export async function prepareVolumes(
  pod: V1Pod,
  dirs: PodDirs,
  runtime: PodRuntime,
  sources: VolumeSources,
): Promise<Map<string, string>> {
  const paths = new Map<string, string>();
  for (const volume of pod.spec?.volumes ?? []) {
    if (volume.hostPath) {
      const path = volume.hostPath.path;
      const type = volume.hostPath.type ?? "";
      if (type === "DirectoryOrCreate") mkdirSync(path, { recursive: true });
      else if (type === "FileOrCreate" && !existsSync(path)) {
        mkdirSync(dirname(path), { recursive: true });
        writeFileSync(path, "");
      } else if (type !== "" && !existsSync(path)) throw new VolumeError(`hostPath ${path} does not exist`);
      paths.set(volume.name, path);
      continue;
    }
    const files = await volumeFiles(pod, volume, runtime, sources);
    const dir = join(dirs.volumes, safeRelative(volume.name));
    mkdirSync(dir, { recursive: true });
    for (const f of files ?? []) {
      const path = join(dir, f.path);
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, f.content);
      // writeFileSync's mode applies only to new files, and is masked by the umask.
      chmodSync(path, f.mode & 0o777);
    }
    paths.set(volume.name, dir);
  }
  return paths;
}

/** The Pod's resolv.conf: the cluster DNS, the search path a kubelet writes for ClusterFirst Pods. */
export function resolvConf(namespace: string, dnsIP: string, clusterDomain: string): string {
  return [
    `nameserver ${dnsIP}`,
    `search ${namespace}.svc.${clusterDomain} svc.${clusterDomain} ${clusterDomain}`,
    "options ndots:5",
    "",
  ].join("\n");
}

/** The Pod's /etc/hosts, as the kubelet writes it: localhost, then the Pod's own name on its IP. */
export function hostsFile(podIP: string, hostname: string, subdomainFqdn?: string): string {
  return [
    "# Kubernetes-managed hosts file (switchboard node agent).",
    "127.0.0.1\tlocalhost",
    "::1\tlocalhost ip6-localhost ip6-loopback",
    `${podIP}\t${subdomainFqdn ? `${subdomainFqdn}\t` : ""}${hostname}`,
    "",
  ].join("\n");
}

/** Writes the Pod's resolv.conf and hosts under dirs.etc; returns their paths. */
export function writeEtcFiles(
  dirs: PodDirs,
  pod: V1Pod,
  podIP: string,
  dnsIP: string,
  clusterDomain: string,
): { resolvConf: string; hosts: string } {
  mkdirSync(dirs.etc, { recursive: true });
  const ns = pod.metadata?.namespace ?? "default";
  const hostname = podHostname(pod);
  const subdomain = pod.spec?.subdomain
    ? `${hostname}.${pod.spec.subdomain}.${ns}.svc.${clusterDomain}`
    : undefined;
  const paths = { resolvConf: join(dirs.etc, "resolv.conf"), hosts: join(dirs.etc, "hosts") };
  writeFileSync(paths.resolvConf, resolvConf(ns, dnsIP, clusterDomain));
  writeFileSync(paths.hosts, hostsFile(podIP, hostname, subdomain));
  return paths;
}

/** spec.hostname, else the Pod's name (cut to the 63 characters a hostname may have). */
export function podHostname(pod: V1Pod): string {
  return (pod.spec?.hostname || pod.metadata?.name || "pod").slice(0, 63);
}

/**
 * The bind mounts of one container: its volumeMounts (subPath inside the volume) and the Pod's
 * resolv.conf and hosts. Throws VolumeError for a mount of an unknown volume.
 */
export function containerMounts(
  container: Pick<V1Container, "volumeMounts">,
  volumePaths: ReadonlyMap<string, string>,
  etc: { resolvConf: string; hosts: string },
): Mount[] {
  const mounts: Mount[] = [];
  for (const vm of container.volumeMounts ?? []) {
    const base = volumePaths.get(vm.name);
    if (base === undefined) throw new VolumeError(`volumeMount ${vm.name}: no such volume`);
    let source = base;
    if (vm.subPath) {
      source = join(base, safeRelative(vm.subPath));
      // As the kubelet does, a missing subPath is created as a directory.
      if (!existsSync(source)) mkdirSync(source, { recursive: true });
    }
    if (!vm.mountPath.startsWith("/"))
      throw new VolumeError(`volumeMount ${vm.name}: mountPath must be absolute`);
    mounts.push({ source, target: vm.mountPath, readOnly: !!vm.readOnly });
  }
  mounts.push({ source: etc.resolvConf, target: "/etc/resolv.conf", readOnly: false });
  mounts.push({ source: etc.hosts, target: "/etc/hosts", readOnly: false });
  return mounts;
}
