import { describe, expect, it } from "vitest";
import { ChatService } from "../../gen/switchboard/api/v1/chat_pb.js";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import { PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { Code, SwitchboardError } from "../lib/errors.js";
import { KeyFile, newKey } from "./key-file.js";
import {
  authorize,
  type ClientGrant,
  METHOD_RULES,
  type Permission,
  type Policy,
  type Principal,
} from "./policy.js";
import { parsePolicyFile, policyOf } from "./setup.js";

const grant = (...permissions: Permission[]): ClientGrant => ({
  permissions: new Set(permissions),
  sendAs: new Set(["bot:billing"]),
  conversations: "member",
});

const SERVICES = [ChatService, GatewayService, IdService, PresenceService, PushService, RouterService];
const noClients: Policy = { clients: new Map() };

function outcome(policy: Policy, principal: Principal | undefined, path: string): string {
  try {
    authorize(policy, principal, path);
    return "allowed";
  } catch (err) {
    if (!(err instanceof SwitchboardError)) throw err;
    return `${Code[err.code]} ${err.reason}`;
  }
}

describe("gRPC authorization", () => {
  it("has a rule for every method of every service, and no rule for a method that does not exist", () => {
    const paths = SERVICES.flatMap((s) => s.methods.map((m) => `/${s.typeName}/${m.name}`));
    expect([...METHOD_RULES.keys()].sort()).toEqual(paths.sort());
  });

  it("allows each internal method to the roles that call it and denies it to every other identity", () => {
    const everyone: Principal[] = [
      "role:gateway",
      "role:router",
      "role:presence",
      "role:push",
      "role:id",
      "role:sequencer",
      "operator",
      "client:billing",
    ];
    const allAllowed: Policy = {
      clients: new Map([["billing", grant("publish", "manageGroups")]]),
    };
    const deliver = "/switchboard.gateway.v1.GatewayService/Deliver";
    const drain = "/switchboard.gateway.v1.GatewayService/Drain";
    expect(everyone.filter((p) => outcome(allAllowed, p, deliver) === "allowed")).toEqual(["role:router"]);
    expect(everyone.filter((p) => outcome(allAllowed, p, drain) === "allowed")).toEqual(["operator"]);
    expect(outcome(allAllowed, "client:billing", deliver)).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");
    expect(outcome(allAllowed, "role:gateway", "/switchboard.push.v1.PushService/Notify")).toBe(
      "PERMISSION_DENIED METHOD_NOT_ALLOWED",
    );
  });

  it("opens backend methods to a client only with the permission, and to nobody unauthenticated", () => {
    const send = "/switchboard.api.v1.ChatService/Publish";
    const history = "/switchboard.api.v1.ChatService/GetHistory";
    const policy: Policy = {
      clients: new Map([["billing", grant("publish")]]),
    };
    expect(outcome(policy, "client:billing", send)).toBe("allowed");
    expect(outcome(policy, "client:billing", history)).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");
    expect(outcome(policy, "client:unknown", send)).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");
    expect(outcome(noClients, "client:billing", send)).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");
    expect(outcome(policy, undefined, send)).toBe("UNAUTHENTICATED UNAUTHENTICATED");
    expect(outcome(policy, "client:billing", "/switchboard.router.v1.RouterService/Nope")).toBe(
      "PERMISSION_DENIED METHOD_NOT_ALLOWED",
    );
    // The deprecated backend methods of RouterService let a caller send as anyone: closed to all.
    const legacy = "/switchboard.router.v1.RouterService/SendMessage";
    expect(outcome(policy, "client:billing", legacy)).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");
    expect(outcome(policy, "role:gateway", legacy)).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");
  });

  it("reads client grants with their senders and conversations, and refuses what it cannot read", () => {
    const { clients } = policyOf([
      "billing=publish+readHistory",
      "moderation=manageGroups+sessions;sendAs=system|bot:mod;conversations=all",
      "support=readHistory;conversations=g:1|dm:a~b",
    ]);
    expect(clients.get("billing")).toEqual({
      permissions: new Set(["publish", "readHistory"]),
      sendAs: new Set(["bot:billing"]),
      conversations: "member",
    });
    expect(clients.get("moderation")?.sendAs).toEqual(new Set(["system", "bot:mod"]));
    expect(clients.get("moderation")?.conversations).toBe("all");
    expect(clients.get("support")?.conversations).toEqual(new Set(["g:1", "dm:a~b"]));
    expect(() => policyOf(["billing=publish;sendAs=bad id"])).toThrow(/sendAs/);
    expect(() => policyOf(["billing=publish;colour=blue"])).toThrow(/colour/);
    expect(() => policyOf(["billing=fly"])).toThrow(/permissions/);
    // An id no conversation can have, and one name granted twice, are mistakes said at start.
    expect(() => policyOf(["support=readHistory;conversations=g:abc"])).toThrow(/conversations=g:abc/);
    expect(() => policyOf(["x=publish", "x=events"])).toThrow(/client x is granted twice/);
    // The policy file's ids are a ChatCluster's, as the operator copied them: one that names no user
    // or conversation grants nothing, and the rest of the file (every role's identity) still reads.
    const file = parsePolicyFile(
      JSON.stringify({
        serviceAccounts: { "chat/router": "role:router" },
        clients: [
          {
            name: "support",
            permissions: ["readHistory"],
            sendAs: ["bot:support", "not a user"],
            conversations: { ids: ["g:1", "dm:bob~alice"] },
          },
        ],
      }),
      "policy.json",
    );
    expect(file.accounts.get("chat/router")).toBe("role:router");
    expect(file.policy.clients.get("support")?.conversations).toEqual(new Set(["g:1", "dm:bob~alice"]));
    expect(file.policy.clients.get("support")?.sendAs).toEqual(new Set(["bot:support", "not a user"]));
  });
});

describe("static key file", () => {
  it("maps a key to the principal of its line, and nothing else to anything", () => {
    const a = newKey("role:router");
    const b = newKey("client:billing");
    const file = KeyFile.parse(`# keys\n${a.line}\n\n${b.line}  # billing's\n`);
    expect(file.size).toBe(2);
    expect(file.verify(a.key)).toBe("role:router");
    expect(file.verify(b.key)).toBe("client:billing");
    expect(file.verify(`${a.key}x`)).toBeUndefined();
    expect(file.verify("")).toBeUndefined();
    expect(a.line).not.toContain(a.key);
  });

  it("refuses a malformed line or an unknown principal, naming the line", () => {
    expect(() => KeyFile.parse("role:router sha256:abc")).toThrow(/:1: expected/);
    const { line } = newKey("operator");
    expect(() => KeyFile.parse(`${line}\nrole:mayor ${line.split(" ")[1]}`)).toThrow(
      /:2: "role:mayor" is not a principal/,
    );
    // One key on two lines would be whichever principal came first.
    expect(() => KeyFile.parse(`${line}\nrole:router ${line.split(" ")[1]}`)).toThrow(/:2: .*earlier line/);
  });
});
