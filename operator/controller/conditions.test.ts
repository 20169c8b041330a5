import { describe, expect, it } from "vitest";
import { computeConditions, type Observation } from "./conditions.js";

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
});
