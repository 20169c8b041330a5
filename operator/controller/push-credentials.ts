/**
 * The push Pods' provider credentials (docs/adr/0008): the Secrets `spec.push.{webhook,fcm,apns,webpush}
 * .secretRef` name, mounted as files the push settings point at (the providers' public settings, such
 * as the APNs key id or the VAPID public key, are in the configuration: config.ts).
 */
import type { V1EnvVar, V1Volume, V1VolumeMount } from "@kubernetes/client-node";
import { envName } from "../../internal/lib/config.js";
import type { ChatCluster, ComponentName } from "../api/v1alpha1.js";

export const PUSH_CREDENTIALS_DIR = "/etc/switchboard/push";
/** The Secret keys read when a secretRef names none. */
export const WEBHOOK_SECRET_DEFAULT_KEY = "signing";
export const FCM_SECRET_DEFAULT_KEY = "service-account.json";
export const APNS_SECRET_DEFAULT_KEY = "AuthKey.p8";
export const VAPID_SECRET_DEFAULT_KEY = "vapid-private-key";

export interface PushCredentialsPod {
  volumes: V1Volume[];
  mounts: V1VolumeMount[];
  env: V1EnvVar[];
}

export function pushCredentialsPod(cluster: ChatCluster, component: ComponentName): PushCredentialsPod {
  const pod: PushCredentialsPod = { volumes: [], mounts: [], env: [] };
  if (component !== "push") return pod;
  // Each provider's Secret key, the file it becomes and the setting that points at it.
  const { webhook, fcm, apns, webpush } = cluster.spec.push;
  const providers = [
    {
      ref: webhook?.secretRef,
      key: WEBHOOK_SECRET_DEFAULT_KEY,
      path: "webhook.secret",
      setting: ["push", "webhookSecretFile"],
    },
    {
      ref: fcm?.secretRef,
      key: FCM_SECRET_DEFAULT_KEY,
      path: "fcm-service-account.json",
      setting: ["push", "fcm", "serviceAccountFile"],
    },
    {
      ref: apns?.secretRef,
      key: APNS_SECRET_DEFAULT_KEY,
      path: "apns-key.p8",
      setting: ["push", "apns", "keyFile"],
    },
    {
      ref: webpush?.secretRef,
      key: VAPID_SECRET_DEFAULT_KEY,
      path: "vapid-private-key",
      setting: ["push", "webpush", "vapidPrivateKeyFile"],
    },
  ];
  const files = providers.flatMap(({ ref, key, path, setting }) =>
    ref ? [{ secret: ref.name, key: ref.key ?? key, path, setting }] : [],
  );
  if (files.length === 0) return pod;
  // One projected volume for every provider's file; without subPath, so a rotated Secret reaches the
  // files (the push process reads them at start: a rotation takes effect with the next rollout).
  pod.volumes.push({
    name: "push-credentials",
    projected: {
      sources: files.map((f) => ({ secret: { name: f.secret, items: [{ key: f.key, path: f.path }] } })),
    },
  });
  pod.mounts.push({ name: "push-credentials", mountPath: PUSH_CREDENTIALS_DIR, readOnly: true });
  for (const f of files)
    pod.env.push({ name: envName(f.setting), value: `${PUSH_CREDENTIALS_DIR}/${f.path}` });
  return pod;
}
