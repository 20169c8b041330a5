/** Which ChatCluster watch events enqueue a reconcile: controller-runtime's predicates, as a pure function. */
import type { KubernetesObject } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { specOrMetadataChanged } from "./predicates.js";

const base = (): KubernetesObject & { status?: unknown } => ({
  apiVersion: "switchboard.dev/v1alpha1",
  kind: "ChatCluster",
  metadata: {
    name: "a",
    namespace: "ns",
    generation: 3,
    resourceVersion: "100",
    finalizers: ["switchboard.dev/cleanup"],
    labels: { team: "chat" },
    annotations: { note: "x" },
  },
  status: { connections: 10 },
});

function updated(change: (o: ReturnType<typeof base>) => void): ReturnType<typeof base> {
  const o = structuredClone(base());
  o.metadata = { ...o.metadata, resourceVersion: "101" };
  change(o);
  return o;
}

describe("specOrMetadataChanged", () => {
  it("ignores an update that changed only the status (and so the resourceVersion)", () => {
    const next = updated((o) => {
      o.status = { connections: 11 };
    });
    expect(specOrMetadataChanged("update", next, base())).toBe(false);
  });

  it("ignores a managedFields-only change", () => {
    const next = updated((o) => {
      o.metadata = {
        ...o.metadata,
        managedFields: [{ manager: "switchboard-operator", operation: "Apply" }],
      };
    });
    expect(specOrMetadataChanged("update", next, base())).toBe(false);
  });

  type Change = (m: NonNullable<KubernetesObject["metadata"]>) => void;
  const changes: Array<[string, Change]> = [
    [
      "a spec change (generation)",
      (m) => {
        m.generation = 4;
      },
    ],
    [
      "the deletion",
      (m) => {
        m.deletionTimestamp = "2026-12-04T00:00:00Z" as unknown as Date;
      },
    ],
    [
      "a finalizer removed",
      (m) => {
        m.finalizers = [];
      },
    ],
    ["a finalizer added", (m) => m.finalizers?.push("other/x")],
    [
      "a label changed",
      (m) => {
        m.labels = { team: "ops" };
      },
    ],
    [
      "a label added",
      (m) => {
        m.labels = { ...m.labels, tier: "1" };
      },
    ],
    [
      "an annotation changed",
      (m) => {
        m.annotations = { note: "y" };
      },
    ],
    [
      "the annotations removed",
      (m) => {
        delete m.annotations;
      },
    ],
  ];
  it.each(changes)("enqueues %s", (_what, change) => {
    expect(
      specOrMetadataChanged(
        "update",
        updated((o) => change(o.metadata ?? {})),
        base(),
      ),
    ).toBe(true);
  });

  it("always enqueues adds and deletes, and an update without its old object", () => {
    expect(specOrMetadataChanged("add", base(), undefined)).toBe(true);
    expect(specOrMetadataChanged("delete", base(), undefined)).toBe(true);
    expect(specOrMetadataChanged("update", base(), undefined)).toBe(true);
  });

  it("treats absent and empty finalizers, labels and annotations alike", () => {
    const bare = base();
    bare.metadata = { name: "a", namespace: "ns", generation: 3 };
    const empty = updated((o) => {
      o.metadata = { name: "a", namespace: "ns", generation: 3, finalizers: [], labels: {}, annotations: {} };
    });
    expect(specOrMetadataChanged("update", empty, bare)).toBe(false);
  });
});
