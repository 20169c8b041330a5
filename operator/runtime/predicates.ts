/**
 * Which watch events of a primary resource are worth a reconcile, as controller-runtime's predicates
 * decide (GenerationChangedPredicate, LabelChangedPredicate, AnnotationChangedPredicate, plus the
 * deletion and finalizer changes a finalizing controller must see).
 *
 * The reconciler writes the resource's status every time, and every write moves its
 * resourceVersion: were that update event enqueued, a status that changes each reconcile (live
 * counts) would run the reconciles back to back, and a failing reconcile's status write would
 * requeue its key at once, past the work queue's backoff. Status-only updates are therefore
 * ignored; the reconciler's own requeues (polling) refresh what the status observes.
 */
import type { KubernetesObject } from "@kubernetes/client-node";
import type { InformerEvent } from "./informer.js";

/**
 * True unless `event` is an update that changed neither metadata.generation (the spec), the
 * deletionTimestamp, the finalizers, the labels nor the annotations. Adds and deletes always count.
 */
export function specOrMetadataChanged(
  event: InformerEvent,
  obj: KubernetesObject,
  old: KubernetesObject | undefined,
): boolean {
  if (event !== "update" || !old) return true;
  const a = old.metadata ?? {};
  const b = obj.metadata ?? {};
  return (
    a.generation !== b.generation ||
    String(a.deletionTimestamp ?? "") !== String(b.deletionTimestamp ?? "") ||
    !sameList(a.finalizers, b.finalizers) ||
    !sameMap(a.labels, b.labels) ||
    !sameMap(a.annotations, b.annotations)
  );
}

function sameList(a: string[] | undefined, b: string[] | undefined): boolean {
  const x = a ?? [];
  const y = b ?? [];
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

function sameMap(a: Record<string, string> | undefined, b: Record<string, string> | undefined): boolean {
  const x = a ?? {};
  const y = b ?? {};
  const keys = Object.keys(x);
  return keys.length === Object.keys(y).length && keys.every((k) => Object.hasOwn(y, k) && x[k] === y[k]);
}
