import { describe, expect, it } from "vitest";
import { BUILD_VERSION } from "../../internal/lib/build-info.js";
import { createOperatorRuntimeMetrics, recordChatClusterReady } from "./metrics.js";

describe("switchboard_operator_chatcluster_ready", () => {
  it("is 1 for a Ready ChatCluster, 0 for one that is not, and gone with the ChatCluster", async () => {
    const metrics = createOperatorRuntimeMetrics();
    const series = async () =>
      (await metrics.registry.metrics())
        .split("\n")
        .filter((l) => l.startsWith("switchboard_operator_chatcluster_ready"));
    recordChatClusterReady(metrics, "chat", "prod", true);
    recordChatClusterReady(metrics, "chat", "staging", false);
    expect(await series()).toEqual([
      'switchboard_operator_chatcluster_ready{chatcluster_namespace="chat",chatcluster="prod"} 1',
      'switchboard_operator_chatcluster_ready{chatcluster_namespace="chat",chatcluster="staging"} 0',
    ]);
    recordChatClusterReady(metrics, "chat", "prod", false);
    recordChatClusterReady(metrics, "chat", "staging", undefined);
    expect(await series()).toEqual([
      'switchboard_operator_chatcluster_ready{chatcluster_namespace="chat",chatcluster="prod"} 0',
    ]);
    expect(await metrics.registry.metrics()).toContain("# TYPE switchboard_operator_chatcluster_ready gauge");
  });
});

describe("switchboard_operator_build_info", () => {
  it("names the operator's version and Node.js's", async () => {
    const text = await createOperatorRuntimeMetrics().registry.metrics();
    expect(text).toContain(
      `switchboard_operator_build_info{version="${BUILD_VERSION}",node_version="${process.versions.node}"} 1`,
    );
  });
});
