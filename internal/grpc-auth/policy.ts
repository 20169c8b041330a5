/**
 * Who may call which gRPC method (ADR 0007). Internal methods are allowed to exactly the identities
 * whose code calls them: the table changes only with that code, so it is code, and a method missing
 * from it is denied to everyone. Methods of the backend API are allowed to configured clients by
 * permission. The check runs before the handler, so a denied call does no work.
 */
import { errors, type SwitchboardError } from "../lib/errors.js";

/** The roles a platform process runs (ADR 0005). */
export const ROLE_NAMES = ["gateway", "router", "presence", "push", "id", "sequencer"] as const;
export type RoleName = (typeof ROLE_NAMES)[number];

/** One caller: a platform role, the operator, or a backend client named in configuration. */
export type Principal = `role:${RoleName}` | "operator" | `client:${string}`;

/** What a backend client may be granted. */
export const PERMISSIONS = [
  "publish",
  "sendToUsers",
  "broadcast",
  "manageGroups",
  "readHistory",
  "presence",
  "sessions",
  "devices",
  "pushDeadLetters",
  "events",
] as const;
export type Permission = (typeof PERMISSIONS)[number];

/**
 * Which conversations a client may touch through the server API: every one, those listed, or those
 * where one of its senders is a member (the default: a bot sees what it was added to).
 */
export type ConversationGrant = "all" | "member" | ReadonlySet<string>;

/** A backend client's grant, as configured (ChatCluster spec.api.clients, or grpc.clients). */
export interface ClientGrant {
  readonly permissions: ReadonlySet<Permission>;
  /** User ids it may send as; by default only its own `bot:<name>`. */
  readonly sendAs: ReadonlySet<string>;
  readonly conversations: ConversationGrant;
}

/** The sender id a client uses when a request names none. */
export function botIdentity(clientName: string): string {
  return `bot:${clientName}`;
}

export interface Policy {
  /** By client name (the `<name>` of `client:<name>`). */
  readonly clients: ReadonlyMap<string, ClientGrant>;
}

interface MethodRule {
  /** Platform identities that call it. */
  readonly callers: readonly Principal[];
  /** The permission that opens it to a backend client, if clients may call it at all. */
  readonly permission?: Permission;
}

const rule = (callers: Principal[], permission?: Permission): MethodRule =>
  permission === undefined ? { callers } : { callers, permission };

/** Every method of every service, by its gRPC path. */
export const METHOD_RULES: ReadonlyMap<string, MethodRule> = new Map([
  ["/switchboard.gateway.v1.GatewayService/Deliver", rule(["role:router"])],
  ["/switchboard.gateway.v1.GatewayService/Drain", rule(["operator"])],
  ["/switchboard.gateway.v1.GatewayService/Stats", rule(["operator"])],
  ["/switchboard.id.v1.IdService/AllocateIds", rule(["role:gateway", "role:router"])],
  ["/switchboard.presence.v1.PresenceService/Heartbeat", rule(["role:gateway"])],
  ["/switchboard.presence.v1.PresenceService/EndSession", rule(["role:gateway"])],
  ["/switchboard.presence.v1.PresenceService/Subscribe", rule(["role:gateway"])],
  ["/switchboard.presence.v1.PresenceService/Unsubscribe", rule(["role:gateway"])],
  ["/switchboard.presence.v1.PresenceService/KeepWatches", rule(["role:gateway"])],
  // Internal, like every method outside ChatService: a client reads presence and manages devices
  // through ChatService's methods of the same names, whose checks (a device id is the user's own)
  // are the server API's.
  ["/switchboard.presence.v1.PresenceService/GetPresence", rule(["role:gateway", "role:router"])],
  ["/switchboard.push.v1.PushService/RegisterDevice", rule(["role:gateway", "role:router"])],
  ["/switchboard.push.v1.PushService/UnregisterDevice", rule(["role:gateway", "role:router"])],
  ["/switchboard.push.v1.PushService/ListDevices", rule(["role:gateway", "role:router"])],
  ["/switchboard.push.v1.PushService/Notify", rule(["role:router"])],
  ["/switchboard.push.v1.PushService/ListDeadLetters", rule(["role:router"])],
  ["/switchboard.push.v1.PushService/ReplayDeadLetters", rule(["role:router"])],
  ["/switchboard.router.v1.RouterService/Relay", rule(["role:gateway", "role:presence", "role:router"])],
  // The first backend API, deprecated by ChatService: it let a client send as anyone, so since the
  // server API's sender grants it is closed to every caller of a guarded port.
  ["/switchboard.router.v1.RouterService/SendMessage", rule([])],
  ["/switchboard.router.v1.RouterService/CreateGroup", rule([])],
  ["/switchboard.router.v1.RouterService/AddMembers", rule([])],
  ["/switchboard.router.v1.RouterService/RemoveMember", rule([])],
  ["/switchboard.router.v1.RouterService/ListMembers", rule([])],
  ["/switchboard.router.v1.RouterService/GetHistory", rule([])],
  ["/switchboard.router.v1.RouterService/LookupUser", rule([])],
  // The server API (switchboard.api.v1.ChatService): clients only; constraints on senders and
  // conversations are checked by the service itself (internal/api/access.ts).
  ["/switchboard.api.v1.ChatService/Publish", rule([], "publish")],
  ["/switchboard.api.v1.ChatService/SendToUser", rule([], "sendToUsers")],
  ["/switchboard.api.v1.ChatService/Broadcast", rule([], "broadcast")],
  ["/switchboard.api.v1.ChatService/CreateGroup", rule([], "manageGroups")],
  ["/switchboard.api.v1.ChatService/UpdateGroup", rule([], "manageGroups")],
  ["/switchboard.api.v1.ChatService/GetConversation", rule([], "manageGroups")],
  ["/switchboard.api.v1.ChatService/AddMembers", rule([], "manageGroups")],
  ["/switchboard.api.v1.ChatService/RemoveMembers", rule([], "manageGroups")],
  ["/switchboard.api.v1.ChatService/ListMembers", rule([], "manageGroups")],
  ["/switchboard.api.v1.ChatService/SetMemberRole", rule([], "manageGroups")],
  ["/switchboard.api.v1.ChatService/GetHistory", rule([], "readHistory")],
  ["/switchboard.api.v1.ChatService/GetPresence", rule([], "presence")],
  ["/switchboard.api.v1.ChatService/ListSessions", rule([], "sessions")],
  ["/switchboard.api.v1.ChatService/Disconnect", rule([], "sessions")],
  ["/switchboard.api.v1.ChatService/RegisterDevice", rule([], "devices")],
  ["/switchboard.api.v1.ChatService/UnregisterDevice", rule([], "devices")],
  ["/switchboard.api.v1.ChatService/ListDevices", rule([], "devices")],
  ["/switchboard.api.v1.ChatService/ListPushDeadLetters", rule([], "pushDeadLetters")],
  ["/switchboard.api.v1.ChatService/ReplayPushDeadLetters", rule([], "pushDeadLetters")],
  ["/switchboard.api.v1.ChatService/StreamEvents", rule([], "events")],
]);

/** Whether `text` names a principal (what configuration and credentials may map to). */
export function isPrincipal(text: string): text is Principal {
  if (text === "operator") return true;
  if (text.startsWith("role:")) return (ROLE_NAMES as readonly string[]).includes(text.slice(5));
  return /^client:[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(text);
}

/**
 * Throws UNAUTHENTICATED without a principal and PERMISSION_DENIED (METHOD_NOT_ALLOWED) when the
 * principal may not call `path`; returns when it may.
 */
export function authorize(policy: Policy, principal: Principal | undefined, path: string): void {
  const denial = denialOf(policy, principal, path);
  if (denial) throw denial;
}

function denialOf(
  policy: Policy,
  principal: Principal | undefined,
  path: string,
): SwitchboardError | undefined {
  if (principal === undefined)
    return errors.unauthenticated(
      "UNAUTHENTICATED",
      `${path} needs credentials: metadata authorization: Bearer <credential>`,
    );
  const r = METHOD_RULES.get(path);
  if (r?.callers.includes(principal)) return undefined;
  if (r?.permission !== undefined && principal.startsWith("client:")) {
    const grant = policy.clients.get(principal.slice("client:".length));
    if (grant?.permissions.has(r.permission)) return undefined;
  }
  return errors.denied(
    "METHOD_NOT_ALLOWED",
    r?.permission !== undefined && principal.startsWith("client:")
      ? `${principal} may not call ${path}: it needs the ${r.permission} permission`
      : `${principal} may not call ${path}`,
  );
}

/** The caller of a role's in-process clients (all-in-one process): `principal`, checked per call. */
export function inProcessCaller(principal: Principal): { principal: Principal; admit(path: string): void } {
  const internalOnly: Policy = { clients: new Map() };
  return { principal, admit: (path) => authorize(internalOnly, principal, path) };
}
