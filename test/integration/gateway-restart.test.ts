/**
 * A gateway killed with -9 and started again in place (same host and HTTP port, no gateway.id set)
 * declares its predecessor's sessions gone: the routers forget them, so their users count as offline
 * again (and get push notifications) instead of staying "online" on a gateway that no longer exists.
 * On the distributed backend only: there the routing table outlives a process (the embedded one
 * starts empty with each process, so the test could not fail there).
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChatService } from "../../gen/switchboard/api/v1/chat_pb.js";
import { newKey } from "../../internal/grpc-auth/key-file.js";
import { grpcClient } from "../../internal/lib/rpc.js";
import { freePort } from "../helpers/grpc.js";
import { RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer, tempDir } from "../helpers/server.js";

let server: ServerProcess;
const dir = tempDir("switchboard-restart-");
const ops = newKey("client:ops");

async function sessionsOf(userId: string): Promise<string[]> {
  const api = grpcClient(ChatService, `127.0.0.1:${server.grpcPort}`, { bearer: () => ops.key });
  try {
    return (await api.listSessions({ userId })).sessions.map((s) => s.sessionId);
  } finally {
    api.close();
  }
}

beforeAll(async () => {
  const keyFile = join(dir.path, "keys");
  writeFileSync(keyFile, `${ops.line}\n`);
  server = await startServer({
    port: await freePort(),
    args: ["--grpc-port", "0"],
    env: { SWITCHBOARD_GRPC_KEY_FILE: keyFile, SWITCHBOARD_GRPC_CLIENTS: "ops=sessions;conversations=all" },
  });
});
afterAll(async () => {
  await server?.dispose();
  dir.remove();
});

describe("a gateway restarted in place", () => {
  it("has the routers forget the sessions of the process it replaced", async () => {
    const bob = await RawClient.connect(server.url, { token: await devToken(server.dataDir, "restart-bob") });
    for (let i = 0; i < 100 && (await sessionsOf("restart-bob")).length === 0; i++)
      await new Promise((r) => setTimeout(r, 50));
    expect(await sessionsOf("restart-bob")).toHaveLength(1);
    await server.kill();
    await bob.closed;
    server = await server.restart();
    // The restarted process's start declared the old sessions gone before its router read the table.
    expect(await sessionsOf("restart-bob")).toEqual([]);
  }, 120_000);
});
