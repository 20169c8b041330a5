import { mkdtempSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { accessOf } from "../api/access.js";
import type { MembershipStore } from "../backends/types.js";
import { loadConfig } from "../lib/config.js";
import { Code, type SwitchboardError } from "../lib/errors.js";
import type { PolicyFile } from "../lib/grpc-policy-file.js";
import { createLogger } from "../lib/log.js";
import { newKey } from "./key-file.js";
import { grpcGuard, grpcPolicy, parsePolicyFile, policyOf } from "./setup.js";

const dirs: string[] = [];
afterEach(() => {
  vi.restoreAllMocks();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const SEND = "/switchboard.api.v1.ChatService/Publish";

describe("gRPC policy file", () => {
  it("reads ServiceAccounts and client grants, and refuses a file naming what is not a principal or permission", () => {
    const file: PolicyFile = {
      serviceAccounts: { "chat/chat-gateway": "role:gateway", "billing/billing": "client:billing" },
      clients: [
        { name: "billing", permissions: ["publish", "readHistory"], conversations: { all: true } },
        { name: "mod", permissions: ["publish"], sendAs: ["system"], conversations: { ids: ["g:1", "g:2"] } },
        { name: "bot", permissions: ["events"] },
      ],
    };
    const parsed = parsePolicyFile(JSON.stringify(file), "policy.json");
    expect(parsed.accounts.get("chat/chat-gateway")).toBe("role:gateway");
    expect([...(parsed.policy.clients.get("billing")?.permissions ?? [])]).toEqual([
      "publish",
      "readHistory",
    ]);
    // Senders in place of its own bot identity, and conversations: all, listed, or (neither) its own.
    expect(parsed.policy.clients.get("billing")?.conversations).toBe("all");
    expect(parsed.policy.clients.get("mod")?.sendAs).toEqual(new Set(["system"]));
    expect(parsed.policy.clients.get("mod")?.conversations).toEqual(new Set(["g:1", "g:2"]));
    expect(parsed.policy.clients.get("bot")).toMatchObject({
      sendAs: new Set(["bot:bot"]),
      conversations: "member",
    });
    expect(() =>
      parsePolicyFile(JSON.stringify({ serviceAccounts: { "a/b": "root" }, clients: [] }), "policy.json"),
    ).toThrow(/policy.json: grpc.serviceAccounts: "a\/b=root"/);
    expect(() =>
      parsePolicyFile(
        JSON.stringify({ serviceAccounts: {}, clients: [{ name: "x", permissions: ["everything"] }] }),
        "policy.json",
      ),
    ).toThrow(/policy.json: grpc.clients/);
    expect(() => parsePolicyFile("{", "policy.json")).toThrow(/policy.json: not JSON/);
    // An emptied list of conversations is refused, not read as "its senders' own" (a wider grant).
    expect(() =>
      parsePolicyFile(
        JSON.stringify({
          clients: [{ name: "x", permissions: ["readHistory"], conversations: { ids: [] } }],
        }),
        "policy.json",
      ),
    ).toThrow(/conversations.ids is empty/);
  });

  it("means what grpc.clients means: sendAs lists every sender, in place of bot:<name>, and one sender granted is the default", () => {
    const file: PolicyFile = {
      serviceAccounts: {},
      clients: [
        { name: "billing", permissions: ["publish"] },
        { name: "mod", permissions: ["publish"], sendAs: ["system"], conversations: { all: true } },
        {
          name: "desk",
          permissions: ["publish"],
          sendAs: ["bot:desk", "support"],
          conversations: { ids: ["g:1"] },
        },
        { name: "empty", permissions: ["publish"], sendAs: [] },
      ],
    };
    const fromFile = parsePolicyFile(JSON.stringify(file), "policy.json").policy;
    const fromConfig = policyOf([
      "billing=publish",
      "mod=publish;sendAs=system;conversations=all",
      "desk=publish;sendAs=bot:desk|support;conversations=g:1",
      "empty=publish",
    ]);
    expect(fromFile).toEqual(fromConfig);
    const membership = {} as MembershipStore;
    for (const policy of [fromFile, fromConfig]) {
      const sender = (client: string, requested = "") => {
        try {
          return accessOf(`client:${client}`, policy, membership).sender(requested);
        } catch (err) {
          return (err as SwitchboardError).reason;
        }
      };
      expect(sender("billing")).toBe("bot:billing");
      expect(sender("mod")).toBe("system"); // its only granted sender
      expect(sender("mod", "bot:mod")).toBe("SENDER_NOT_ALLOWED");
      expect(sender("desk")).toBe("bot:desk");
      expect(sender("desk", "support")).toBe("support");
      expect(sender("empty")).toBe("bot:empty");
    }
  });

  it("is read again when it changes: a client granted later is admitted without a restart", async () => {
    const dir = mkdtempSync(join(tmpdir(), "switchboard-policy-"));
    dirs.push(dir);
    const billing = newKey("client:billing");
    writeFileSync(join(dir, "keys"), `${billing.line}\n`);
    const policyFile = join(dir, "policy.json");
    const write = (file: PolicyFile, mtimeS: number) => {
      writeFileSync(policyFile, JSON.stringify(file));
      utimesSync(policyFile, mtimeS, mtimeS);
    };
    write({ serviceAccounts: {}, clients: [] }, 1_000);
    const config = loadConfig({}, { "grpc.keyFile": join(dir, "keys"), "grpc.policyFile": policyFile });
    const guard = (await grpcGuard(config, createLogger({ test: "policy-file" })))!;
    const call = () =>
      guard(SEND, `Bearer ${billing.key}`, undefined).then(
        () => "allowed",
        (err: SwitchboardError) => `${Code[err.code]} ${err.reason}`,
      );
    expect(await call()).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");

    write({ serviceAccounts: {}, clients: [{ name: "billing", permissions: ["publish"] }] }, 2_000);
    const now = Date.now();
    vi.spyOn(Date, "now").mockReturnValue(now + 6_000);
    expect(await call()).toBe("allowed");

    // A broken version keeps the last good one in force.
    writeFileSync(policyFile, "{ not json");
    utimesSync(policyFile, 3_000, 3_000);
    vi.spyOn(Date, "now").mockReturnValue(now + 12_000);
    expect(await call()).toBe("allowed");
  });

  it("names its setting when the file cannot be read at start", () => {
    const config = loadConfig({ SWITCHBOARD_GRPC_POLICY_FILE: "/nonexistent/policy.json" });
    expect(() => grpcPolicy(config, createLogger({ level: "error" }))).toThrow(
      /^grpc.policyFile \/nonexistent\/policy.json: ENOENT/,
    );
  });
});
