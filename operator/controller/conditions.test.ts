import type { V1Deployment, V1Pod, V1StatefulSet } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import {
  computeConditions,
  type Observation,
  observeWorkload,
  rollingOut,
  STATEFULSET_PROGRESS_DEADLINE_MS,
} from "./conditions.js";

const ready = { desired: 2, replicas: 2, readyReplicas: 2, updatedReplicas: 2, observed: true };
const base: Observation = {
  generation: 3,
  provisioned: true,
  components: { gateway: ready, router: ready },
  drainingGateways: 0,
};
const byType = (cs: ReturnType<typeof computeConditions>) => Object.fromEntries(cs.map((c) => [c.type, c]));

describe("computeConditions", () => {
  it("is Ready, not Progressing, not Degraded when every component is ready, at the generation", () => {
    const c = byType(computeConditions(undefined, base, new Date("2026-01-01T00:00:00.500Z")));
    expect(c.Ready).toMatchObject({ status: "True", reason: "AllComponentsReady", observedGeneration: 3 });
    expect(c.Progressing).toMatchObject({ status: "False", reason: "Stable" });
    expect(c.Degraded).toMatchObject({ status: "False" });
    expect(c.Ready?.lastTransitionTime).toEqual(new Date("2026-01-01T00:00:00Z"));
  });

  it("is not Ready when the spec could not be applied, even with no component read", () => {
    const c = byType(
      computeConditions(undefined, { ...base, components: {}, applyError: "422 Invalid" }, new Date()),
    );
    expect(c.Ready).toMatchObject({ status: "False", reason: "ApplyFailed" });
    expect(c.Ready?.message).toContain("422 Invalid");
    expect(c.Degraded).toMatchObject({ status: "True", reason: "ApplyFailed" });
    // Neither moving towards the spec nor matching it.
    expect(c.Progressing).toMatchObject({ status: "False", reason: "ApplyFailed" });
    expect(c.Progressing?.message).toContain("422 Invalid");
  });

  it("is Degraded, still Ready, when some of spec.settings were refused, and names them", () => {
    const refused = ["gateway.nope: unknown configuration key gateway.nope"];
    const c = byType(computeConditions(undefined, { ...base, settingsRefused: refused }, new Date()));
    expect(c.Ready).toMatchObject({ status: "True", reason: "AllComponentsReady" });
    expect(c.Degraded).toMatchObject({ status: "True", reason: "SettingsRefused" });
    expect(c.Degraded?.message).toContain("gateway.nope: unknown configuration key");
    // An apply error says more than the settings: it is the reason.
    const both = byType(
      computeConditions(undefined, { ...base, settingsRefused: refused, applyError: "422" }, new Date()),
    );
    expect(both.Degraded).toMatchObject({ status: "True", reason: "ApplyFailed" });
  });

  it("reports a rollout with the lagging components", () => {
    const o = { ...base, components: { ...base.components, router: { ...ready, readyReplicas: 1 } } };
    const c = byType(computeConditions(undefined, o, new Date()));
    expect(c.Ready).toMatchObject({
      status: "False",
      reason: "ComponentsNotReady",
      message: "router 1/2 ready",
    });
    expect(c.Progressing).toMatchObject({ status: "True", reason: "RollingOut" });
  });

  it("stays Ready while gateways drain before a scale-down (they say not ready on purpose), not for more", () => {
    const draining = {
      ...base,
      drainingGateways: 1,
      components: { ...base.components, gateway: { ...ready, readyReplicas: 1 } },
    };
    const c = byType(computeConditions(undefined, draining, new Date()));
    expect(c.Ready).toMatchObject({ status: "True" });
    expect(c.Progressing).toMatchObject({ status: "True", reason: "DrainingGateways" });
    const alsoDown = {
      ...draining,
      components: { ...draining.components, gateway: { ...ready, readyReplicas: 0 } },
    };
    expect(byType(computeConditions(undefined, alsoDown, new Date())).Ready).toMatchObject({
      status: "False",
      message: "gateway 0/2 ready",
    });
  });

  it("is not Ready while a rollout still has an old Pod (surge), even with every new Pod ready", () => {
    const surge = { desired: 3, replicas: 4, readyReplicas: 4, updatedReplicas: 3, observed: true };
    const c = byType(
      computeConditions(
        undefined,
        { ...base, components: { ...base.components, router: surge } },
        new Date(),
      ),
    );
    expect(c.Ready).toMatchObject({ status: "False", reason: "ComponentsNotReady" });
    expect(c.Progressing).toMatchObject({ status: "True", reason: "RollingOut" });
  });

  it("is Degraded and not Ready when provisioning failed before it ever succeeded", () => {
    const o = { ...base, provisioned: false, provisionError: "broker down", components: {} };
    const c = byType(computeConditions(undefined, o, new Date()));
    expect(c.Ready).toMatchObject({ status: "False", reason: "ProvisioningFailed" });
    expect(c.Degraded).toMatchObject({
      status: "True",
      reason: "ProvisioningFailed",
      message: "broker down",
    });
  });

  it("keeps lastTransitionTime while the status does not change, and moves it when it flips", () => {
    const t1 = new Date("2026-01-01T00:00:00Z");
    const first = computeConditions(undefined, base, t1);
    const same = byType(
      computeConditions(first, { ...base, generation: 4 }, new Date("2026-01-01T01:00:00Z")),
    );
    expect(same.Ready?.lastTransitionTime).toEqual(t1);
    expect(same.Ready?.observedGeneration).toBe(4);
    const flipped = byType(
      computeConditions(first, { ...base, drainingGateways: 1 }, new Date("2026-01-01T02:00:00Z")),
    );
    expect(flipped.Progressing).toMatchObject({ status: "True", reason: "DrainingGateways" });
    expect(flipped.Progressing?.lastTransitionTime).toEqual(new Date("2026-01-01T02:00:00Z"));
  });

  it("adds a PodMonitor condition only when the spec asks for a PodMonitor, apart from Ready", () => {
    expect(computeConditions(undefined, base, new Date()).map((c) => c.type)).toEqual([
      "Ready",
      "Progressing",
      "Degraded",
    ]);
    const missing = byType(
      computeConditions(undefined, { ...base, podMonitor: "CRDNotInstalled" }, new Date()),
    );
    expect(missing.PodMonitor).toMatchObject({
      status: "False",
      reason: "CRDNotInstalled",
      observedGeneration: 3,
    });
    expect(missing.PodMonitor?.message).toContain("monitoring.coreos.com/v1 PodMonitor");
    // Monitoring is not the chat: the cluster stays Ready and not Degraded without it.
    expect(missing.Ready).toMatchObject({ status: "True" });
    expect(missing.Degraded).toMatchObject({ status: "False" });
    const created = byType(computeConditions(undefined, { ...base, podMonitor: "Created" }, new Date()));
    expect(created.PodMonitor).toMatchObject({ status: "True", reason: "Created" });
    const pending = byType(computeConditions(undefined, { ...base, podMonitor: "Pending" }, new Date()));
    expect(pending.PodMonitor).toMatchObject({ status: "Unknown", reason: "Pending" });
  });

  it("is Degraded, naming the component, when a rollout is past its progress deadline, and recovers with it", () => {
    const stuck = {
      ...ready,
      readyReplicas: 2,
      replicas: 3,
      updatedReplicas: 1,
      progressDeadlineExceeded: 'ReplicaSet "chat-router-5d9f" has timed out progressing.',
    };
    const o = { ...base, components: { ...base.components, router: stuck } };
    const c = byType(computeConditions(undefined, o, new Date()));
    expect(c.Degraded).toMatchObject({
      status: "True",
      reason: "ProgressDeadlineExceeded",
      message: 'rollout stuck: router: ReplicaSet "chat-router-5d9f" has timed out progressing.',
    });
    // A Deployment stuck is not progressing either (as the Deployment itself says), and not Ready.
    expect(c.Progressing).toMatchObject({ status: "False", reason: "ProgressDeadlineExceeded" });
    expect(c.Ready).toMatchObject({ status: "False", reason: "ComponentsNotReady" });
    // An apply error says more: it wins.
    const both = byType(computeConditions(undefined, { ...o, applyError: "422 Invalid" }, new Date()));
    expect(both.Degraded).toMatchObject({ status: "True", reason: "ApplyFailed" });
    // Once the rollout completes, Degraded goes back to False.
    const later = byType(computeConditions(Object.values(c), base, new Date()));
    expect(later.Degraded).toMatchObject({ status: "False", reason: "AsExpected" });
  });
});

describe("observeWorkload", () => {
  const deployment = (
    generation: number,
    observedGeneration: number,
    progressing?: { status: string; reason: string; message?: string },
  ): V1Deployment => ({
    metadata: { name: "chat-gateway", generation },
    spec: { replicas: 2, selector: {}, template: {} },
    status: {
      observedGeneration,
      replicas: 3,
      readyReplicas: 2,
      updatedReplicas: 1,
      ...(progressing ? { conditions: [{ type: "Progressing", ...progressing }] } : {}),
    },
  });

  it("reads the counts, and a stuck rollout from the Deployment's Progressing condition at its generation", () => {
    expect(observeWorkload(deployment(4, 4))).toEqual({
      desired: 2,
      replicas: 3,
      readyReplicas: 2,
      updatedReplicas: 1,
      observed: true,
    });
    const stuck = { status: "False", reason: "ProgressDeadlineExceeded", message: "timed out" };
    expect(observeWorkload(deployment(4, 4, stuck)).progressDeadlineExceeded).toBe("timed out");
    // Of an older generation: says nothing about the spec just applied.
    expect(observeWorkload(deployment(5, 4, stuck))).toMatchObject({ observed: false });
    expect(observeWorkload(deployment(5, 4, stuck)).progressDeadlineExceeded).toBeUndefined();
    // Progressing, or done.
    for (const progressing of [
      { status: "True", reason: "ReplicaSetUpdated" },
      { status: "True", reason: "NewReplicaSetAvailable" },
    ])
      expect(observeWorkload(deployment(4, 4, progressing)).progressDeadlineExceeded).toBeUndefined();
    // A StatefulSet has no Progressing condition; a workload not found counts nothing.
    const sts: V1StatefulSet = {
      metadata: { generation: 1 },
      spec: { replicas: 1, selector: {}, serviceName: "x", template: {} },
      status: { observedGeneration: 1, replicas: 1, readyReplicas: 1, updatedReplicas: 1 },
    };
    expect(observeWorkload(sts)).toEqual({
      desired: 1,
      replicas: 1,
      readyReplicas: 1,
      updatedReplicas: 1,
      observed: true,
    });
    expect(observeWorkload(undefined)).toEqual({
      desired: 0,
      replicas: 0,
      readyReplicas: 0,
      updatedReplicas: 0,
      observed: true,
    });
  });

  describe("a StatefulSet's rollout, from its Pods", () => {
    const now = new Date("2026-12-06T12:00:00Z");
    const ago = (ms: number) => new Date(now.getTime() - ms).toISOString();
    const presence = (generation = 2, observedGeneration = 2): V1StatefulSet => ({
      metadata: { name: "chat-presence", generation },
      spec: { replicas: 2, selector: {}, serviceName: "chat-presence", template: {} },
      status: {
        observedGeneration,
        replicas: 2,
        readyReplicas: 1,
        updatedReplicas: 1,
        currentRevision: "chat-presence-old",
        updateRevision: "chat-presence-new",
      },
    });
    const pod = (
      name: string,
      revision: string,
      ready: { status: string; since: string } | undefined,
      waiting?: string,
    ): V1Pod => ({
      metadata: {
        name,
        creationTimestamp: ago(STATEFULSET_PROGRESS_DEADLINE_MS + 60_000) as unknown as Date,
        labels: { "controller-revision-hash": revision },
      },
      status: {
        ...(ready
          ? {
              conditions: [
                { type: "Ready", status: ready.status, lastTransitionTime: ready.since as unknown as Date },
              ],
            }
          : {}),
        ...(waiting ? { containerStatuses: [waitingContainer(waiting)] } : {}),
      },
    });
    const waitingContainer = (reason: string) => ({
      name: "presence",
      image: "x",
      imageID: "",
      ready: false,
      restartCount: 7,
      state: { waiting: { reason } },
    });
    const deadline = STATEFULSET_PROGRESS_DEADLINE_MS;

    it("is stuck when a Pod of the update revision stays unready past the deadline, and says which and why", () => {
      const pods = [
        pod("chat-presence-0", "chat-presence-old", { status: "True", since: ago(3_600_000) }),
        pod(
          "chat-presence-1",
          "chat-presence-new",
          { status: "False", since: ago(deadline + 1_000) },
          "CrashLoopBackOff",
        ),
      ];
      expect(rollingOut(presence())).toBe(true);
      expect(observeWorkload(presence(), { pods, now }).progressDeadlineExceeded).toBe(
        `Pod chat-presence-1 of revision chat-presence-new not ready for ${(deadline + 1_000) / 1000} s (CrashLoopBackOff)`,
      );
      // Never started (no room on the nodes: no Ready condition yet): counted from its creation.
      const pending = [pod("chat-presence-1", "chat-presence-new", undefined)];
      expect(observeWorkload(presence(), { pods: pending, now }).progressDeadlineExceeded).toMatch(
        /^Pod chat-presence-1 of revision chat-presence-new not ready for 660 s$/,
      );
    });

    it("is not stuck before the deadline, for an old revision's Pod, a ready or a deleted Pod, or an unobserved spec", () => {
      const young = [
        pod("chat-presence-1", "chat-presence-new", { status: "False", since: ago(deadline - 1_000) }),
      ];
      expect(observeWorkload(presence(), { pods: young, now }).progressDeadlineExceeded).toBeUndefined();
      const old = [
        pod("chat-presence-0", "chat-presence-old", { status: "False", since: ago(deadline * 3) }),
      ];
      expect(observeWorkload(presence(), { pods: old, now }).progressDeadlineExceeded).toBeUndefined();
      const ready = [
        pod("chat-presence-1", "chat-presence-new", { status: "True", since: ago(deadline * 3) }),
      ];
      expect(observeWorkload(presence(), { pods: ready, now }).progressDeadlineExceeded).toBeUndefined();
      const deleted = pod("chat-presence-1", "chat-presence-new", {
        status: "False",
        since: ago(deadline * 3),
      });
      deleted.metadata!.deletionTimestamp = now;
      expect(observeWorkload(presence(), { pods: [deleted], now }).progressDeadlineExceeded).toBeUndefined();
      // A spec the StatefulSet controller has not seen yet: its Pods say nothing about it.
      const stuck = [
        pod("chat-presence-1", "chat-presence-new", { status: "False", since: ago(deadline * 3) }),
      ];
      expect(observeWorkload(presence(3, 2), { pods: stuck, now }).progressDeadlineExceeded).toBeUndefined();
    });
  });
});
