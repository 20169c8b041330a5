import { describe, expect, it } from "vitest";
import { loadConfig } from "../lib/config.js";
import { workerIdWarning } from "./server-commands.js";

describe("id.workerId of role all on the distributed backend", () => {
  const distributed = loadConfig({ SWITCHBOARD_BACKEND: "distributed" });

  it("is warned about while it is left at its default: all-in-one processes sharing storage must differ", () => {
    expect(workerIdWarning("all", distributed, { SWITCHBOARD_BACKEND: "distributed" })).toMatch(
      /id\.workerId is not set \(SWITCHBOARD_ID_WORKER_ID\).*must have its own id\.workerId.*collide/,
    );
  });

  it("is not warned about when set, on the embedded backend, or for the split roles", () => {
    const env = { SWITCHBOARD_BACKEND: "distributed", SWITCHBOARD_ID_WORKER_ID: "0" };
    expect(workerIdWarning("all", loadConfig(env), env)).toBeUndefined();
    expect(workerIdWarning("all", loadConfig({}), {})).toBeUndefined();
    for (const role of ["gateway", "router", "id", "sequencer"] as const)
      expect(workerIdWarning(role, distributed, {}), role).toBeUndefined();
  });
});
