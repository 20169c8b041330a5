/** Which metrics a process exports, by its role (createMetrics, EXPORTED_BY). */
import { describe, expect, it } from "vitest";
import { createMetrics, EXPORTED_BY } from "./metrics.js";

async function names(role?: string): Promise<Set<string>> {
  const metrics = role === undefined ? createMetrics() : createMetrics(role);
  return new Set((await metrics.registry.getMetricsAsJSON()).map((m) => m.name));
}

describe("createMetrics", () => {
  it("exports every metric in role all, each role-scoped one named in EXPORTED_BY among them", async () => {
    const all = await names();
    for (const name of Object.keys(EXPORTED_BY)) expect(all, name).toContain(name);
    expect(all).toContain("switchboard_gateway_connections");
    expect(all).toContain("switchboard_router_deliveries_total");
  });

  it("exports in a split role only its own part's metrics, and what every process has", async () => {
    const id = await names("id");
    for (const name of Object.keys(EXPORTED_BY)) expect(id, name).not.toContain(name);
    for (const common of [
      "switchboard_ready",
      "switchboard_build_info",
      "switchboard_invariant_violations_total",
    ])
      expect(id).toContain(common);

    const gateway = await names("gateway");
    expect(gateway).toContain("switchboard_gateway_connections");
    expect(gateway).toContain("switchboard_gateway_sockets");
    expect(gateway).toContain("switchboard_messages_appended_total");
    expect(gateway).toContain("switchboard_presence_watches_lost_total");
    expect(gateway).not.toContain("switchboard_router_deliveries_total");
    expect(gateway).not.toContain("switchboard_presence_users_online");

    const router = await names("router");
    expect(router).toContain("switchboard_router_deliveries_total");
    // The server API (ChatService) sends from routers.
    expect(router).toContain("switchboard_message_append_seconds");
    expect(router).not.toContain("switchboard_gateway_connections_max");

    expect(await names("presence")).toContain("switchboard_presence_users_online");
    expect(await names("push")).toContain("switchboard_push_notifications_total");
    expect(await names("sequencer")).toContain("switchboard_sequencer_dedupe_checks_total");
  });
});
