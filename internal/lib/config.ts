/**
 * One typed configuration tree (Centrifugo's configtypes idea): every setting is declared once with
 * its default and documentation; environment variable names and the configuration reference in the
 * README are derived from the same tree (`switchboard config docs`).
 */
import { TIMER_MS_MAX } from "./at-time.js";

interface Setting<T> {
  readonly default: T;
  readonly doc: string;
  readonly parse: (raw: string) => T;
}

/**
 * Decimal digits only (an optional minus sign, spaces around ignored): Number() alone read "" and " "
 * as 0 (SWITCHBOARD_HTTP_PORT= listened on a random port), "0x1F" as 31 and "1e3" as 1000.
 */
const DECIMAL_INTEGER = /^-?[0-9]+$/;
const int = (def: number, doc: string, min = 0, max = Number.MAX_SAFE_INTEGER): Setting<number> => ({
  default: def,
  doc,
  parse: (raw) => {
    const text = raw.trim();
    const n = DECIMAL_INTEGER.test(text) ? Number(text) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max)
      throw new Error(
        `expected a decimal integer in [${min}, ${max}]${text === "" ? " (the variable is set but empty)" : ""}`,
      );
    return n;
  },
});
/**
 * A duration in milliseconds, which setTimeout or setInterval will take: at most 2^31 − 1 (about 24.8
 * days). Node takes a longer one as 1 ms, and a gateway given such a ping interval or auth timeout
 * would end every connection at once.
 */
const ms = (def: number, doc: string, min = 0, max = TIMER_MS_MAX): Setting<number> =>
  int(def, doc, min, max);
const str = (def: string, doc: string): Setting<string> => ({ default: def, doc, parse: (raw) => raw });
const bool = (def: boolean, doc: string): Setting<boolean> => ({
  default: def,
  doc,
  parse: (raw) => {
    if (/^(1|true|yes|on)$/i.test(raw)) return true;
    if (/^(0|false|no|off)$/i.test(raw)) return false;
    throw new Error("expected true or false");
  },
});
const list = (def: string[], doc: string): Setting<string[]> => ({
  default: def,
  doc,
  parse: (raw) =>
    raw
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s.length > 0),
});
const ratio = (def: number, doc: string): Setting<number> => ({
  default: def,
  doc,
  parse: (raw) => {
    const text = raw.trim();
    const n = /^([0-9]+(\.[0-9]*)?|\.[0-9]+)$/.test(text) ? Number(text) : Number.NaN;
    if (!(n >= 0 && n <= 1)) throw new Error("expected a decimal number in [0, 1]");
    return n;
  },
});
const oneOf = <T extends string>(values: readonly T[], def: T, doc: string): Setting<T> => ({
  default: def,
  doc: `${doc} One of: ${values.join(", ")}.`,
  parse: (raw) => {
    if (!(values as readonly string[]).includes(raw)) throw new Error(`expected one of ${values.join(", ")}`);
    return raw as T;
  },
});

export const schema = {
  http: {
    host: str("127.0.0.1", "Address the HTTP/WebSocket server listens on."),
    port: int(
      8080,
      "Port of the HTTP/WebSocket server (/ws, /v1/connect, the web client, /healthz, /readyz, and /metrics unless http.internalPort is set).",
      0,
      65535,
    ),
    internalPort: int(
      0,
      "Port of a second HTTP server, on http.host, for what only the platform's operators need: /healthz, /readyz and /metrics, nothing else (404). With it, http.port no longer answers /metrics (it keeps /healthz and /readyz for load balancers' health checks), so a port exposed to clients shows no metrics; put only http.port behind the load balancer. 0: off, everything on http.port (there is no random internal port: a scraper must know it). Must differ from http.port and grpc.port. The operator sets 9091 (container port `internal`).",
      0,
      65535,
    ),
    publicUrl: str(
      "",
      "WebSocket URL handed out by /v1/connect; derived from the request's Host when empty (wss:// when X-Forwarded-Proto or Forwarded says the client came over https).",
    ),
    headersTimeoutMs: ms(
      10_000,
      "Time a client may take to send the request headers, an upgrade's included (slowloris bound): a connection still sending them is answered 408 and closed at most a second later (a tenth of the timeout when that is shorter); a whole request may take three times as long. At least 1000: there is no way to turn the bound off.",
      1_000,
    ),
  },
  grpc: {
    port: int(
      0,
      "Port of the gRPC server of this process's services (0: a free port, printed at start). Role all opens it only when asked (grpc.enabled, a non-zero grpc.port, or `--grpc-port`).",
      0,
      65535,
    ),
    enabled: bool(
      false,
      "Role all: also serve every service over gRPC (`--grpc-port` or a non-zero grpc.port turns it on too); off, role all opens no gRPC port. The split roles always serve gRPC.",
    ),
    keepaliveMs: ms(
      10_000,
      "Both ends of every gRPC connection between processes (and this server toward its callers) send an HTTP/2 PING after this long, idle or not, and close the connection when one goes unanswered for grpc.keepaliveTimeoutMs: a peer that is gone without a FIN or RST (a host down, a flow the network forgot) is found within keepaliveMs + keepaliveTimeoutMs instead of the kernel's hours, and calls move to a live connection. See router.deliverKeepaliveMs for the routers' Deliver streams. PINGs cover one HTTP/2 hop: behind a service mesh's sidecars or an L7 proxy they reach only the local proxy. A peer built on gRPC C-core or grpc-go enforces a minimum ping interval (5 min by default) and answers faster pings with GOAWAY too_many_pings; Switchboard's own servers do not, but raise this past any such hop's minimum.",
      1_000,
    ),
    keepaliveTimeoutMs: ms(
      5_000,
      "How long a keepalive PING may go unanswered before the connection is closed (grpc.keepaliveMs). A process whose event loop is blocked this long loses its connections (a gateway's Deliver streams are dialled again and its users' inboxes re-checked): keep it well above the longest pause you expect.",
      1_000,
    ),
    reflection: bool(
      false,
      "Serve gRPC server reflection (grpc.reflection.v1 and v1alpha), so that grpcurl and similar tools list and describe the services without the .proto files. It tells every caller the whole schema of this process's services, internal ones included (every method, message and field): anyone who reaches the port, or with grpc.keyFile or grpc.tokenAudience any authenticated caller; it grants no access by itself. Off in production unless only trusted callers reach the port. Health (grpc.health.v1) is always served.",
    ),
    keyFile: str(
      "",
      "Static key file of the gRPC server (docs/adr/0007): one line per key, `<principal> sha256:<hex of the key>`, principals `role:<role>`, `operator` or `client:<name>`; `switchboard grpc-key --principal P` makes a key and its line. With it (or tokenAudience) set, every gRPC call needs `authorization: Bearer <credential>` of a principal allowed the method (the health service stays public). Re-read when it changes. Empty: not used.",
    ),
    tokenAudience: str(
      "",
      "Also accept Kubernetes ServiceAccount tokens bound to this audience, verified with the API server's TokenReview (the process's own Kubernetes credentials need `create` on `tokenreviews`). Empty: not accepted.",
    ),
    serviceAccounts: list(
      [],
      "The ServiceAccounts that are principals, as `namespace/name=principal` (e.g. `chat/billing=client:billing`).",
    ),
    clients: list(
      [],
      "What backend clients may do through the server API (docs/server-api.md), as `name=permission+permission[;sendAs=user|user][;conversations=all|member|id|id]`. Permissions: publish, sendToUsers, broadcast, manageGroups, readHistory, presence, sessions, devices, pushDeadLetters, events. sendAs: the user ids it may send as (default: its own `bot:<name>`); conversations: which it may publish into, read, manage and stream (default `member`: where one of its senders is a member).",
    ),
    credentialFile: str(
      "",
      "File holding this process's own credential for its calls to other roles (a key of the key file, or a projected ServiceAccount token); read again when it changes (looked at every 60 s). Empty: calls carry none.",
    ),
    policyFile: str(
      "",
      'JSON policy file adding ServiceAccounts (`serviceAccounts`: {"namespace/name": principal}) and client grants (`clients`: [{name, permissions, sendAs, conversations}]) to grpc.serviceAccounts and grpc.clients; the operator renders it from the ChatCluster\'s spec.api.clients into a mounted ConfigMap. Read again when it changes (looked at every 5 s), so a new client needs no restart; a version that does not parse keeps the previous one in force. Empty: not used.',
    ),
    allowUnauthenticated: bool(
      false,
      "Open the gRPC port without authentication (no grpc.keyFile, grpc.tokenAudience or grpc.tls.dir) outside dev mode: anyone who reaches it may call every method. Only where something else admits callers (a service mesh enforcing mTLS and authorization policies); warned about at start. Off, such a port stops the process at start unless it runs with --dev.",
    ),
    tls: {
      dir: str(
        "",
        "mTLS (docs/adr/0007): a directory in cert-manager's Secret layout, `tls.crt`, `tls.key`, `ca.crt` (a mounted Secret). The gRPC server then serves only TLS with tls.crt and requires a client certificate signed by a CA of ca.crt; the caller's principal is the certificate's URI SAN `switchboard://<principal>` (else its CN), authorized like a bearer credential (a bearer sent too must name the same principal). This process's own calls present the same key pair and accept only a server whose certificate ca.crt signs and whose URI SAN names the role called (`switchboard://role:<role>`). Re-read every grpc.tls.refreshMs: rotation needs no restart, and a client of a CA no longer in ca.crt, or whose certificate expired, is refused on open connections too. Empty: plaintext.",
      ),
      refreshMs: ms(
        10_000,
        "How often grpc.tls.dir is read again for a new version (a version whose key does not match its certificate is ignored until it does).",
        100,
      ),
      clientCertificate: oneOf(
        ["require", "optional"] as const,
        "require",
        "Whether the TLS handshake requires a client certificate. require: a caller without one, or with one of another CA or expired, is refused at the handshake. optional: for a port that also serves bearer callers (in-cluster ServiceAccount tokens, keys) without certificates; a certificate the handshake cannot verify (another CA, expired, not for client auth) is no credential, a verified one is checked on every call all the same, and a call with neither credential is refused UNAUTHENTICATED.",
      ),
    },
  },
  cluster: {
    idTarget: str(
      "",
      "gRPC target of the id service, for gateways and routers of split roles: `dns:///name:port` (a headless Service; calls spread over every address) or `ipv4:host:port,host:port`. Empty: in this process (role all).",
    ),
    routerTarget: str(
      "",
      "gRPC target of the routers (Relay of typing, receipts, group changes and presence), for gateways, routers and presence of split roles, and for role all when several of its processes share the distributed storage (every process's gRPC address); same forms as cluster.idTarget. Empty: in this process. Each user's presence changes and each conversation's events go through one router of this target (an ipv4: list, or a DNS name resolved every 10 s), so they arrive in order.",
    ),
    pushTarget: str(
      "",
      "gRPC target of the push service, for routers (notifications) and gateways (device registration) of split roles; same forms as cluster.idTarget. Empty: in this process.",
    ),
    presenceTargets: list(
      [],
      "gRPC target of each presence shard, in shard order (a user's presence lives on shard hash(user) mod count), for gateways and routers (the server API's presence reads) of split roles, and for role all when several of its processes share the distributed storage (every process's gRPC address; the process at position i is shard i, cluster.presenceShard). Empty: in this process (role all warns at start on the distributed backend with gRPC on). Set on role all, gRPC must be on (grpc.port or --grpc-port, this process's address among the targets), else the process does not start.",
    ),
    presenceShard: int(
      0,
      "This presence process's shard number (in Kubernetes, the StatefulSet ordinal); added to its log lines.",
      0,
      1023,
    ),
  },
  dataDir: str(".data", "Directory of the embedded database and the dev JWT secret."),
  dataDirFreeBytesMin: int(
    256 * 1024 * 1024,
    "Embedded backend: while the file system that holds dataDir has fewer bytes free than this, new messages are refused with STORAGE_FULL (retryable: clients send them again later) and everything else goes on (sync, history, receipts, group changes), on this reserve; messages are taken again once a tenth more than it is free, with no restart. Checked every second, and while less than twice it is free also as messages come (at most every 10 ms); logged, and switchboard_storage_full is 1 meanwhile. Below 1 MiB free (or this, if smaller) the server does not start. 0: no check (a write that fails for lack of space stops the process).",
  ),
  backend: oneOf(["embedded", "distributed"] as const, "embedded", "Storage backend."),
  shutdownTimeoutMs: ms(
    30_000,
    "How long a stop (SIGTERM, SIGINT, or a fatal error) may take to close everything, after a gateway's drain (gateway.shutdownDrainMs); past it the process exits with code 1 (70 after a fatal error) without waiting further. A second signal while stopping exits at once (130 for SIGINT, 143 for SIGTERM), and a stop where something failed to close exits with code 1.",
    1_000,
  ),
  auth: {
    jwksUrl: str(
      "",
      "JWKS URL to verify client JWTs (RS256/PS256/ES256/EdDSA); when empty (and auth.issuers too), HS256 tokens of auth.secretFile, or else of the dev secret in dataDir, are accepted (see auth.secretFile). A misspelled variable is not this one: unknown SWITCHBOARD_* variables are warned about at start, with the setting they most resemble.",
    ),
    secretFile: str(
      "",
      "File holding the HS256 secrets client JWTs are verified with when auth.jwksUrl is empty (e.g. a mounted Secret): it must exist and is never created. Its text, surrounding whitespace trimmed, is the key (at least 32 bytes of UTF-8, else the start is refused); when it has several lines and each, trimmed, has 32 bytes or more, each line is a key too (blank lines skipped), and `switchboard token` signs with the first. The file is read again when it changes (looked at every 5 s; a version that cannot be read or is too short keeps the previous one in force), so a key rotates without a restart: add the new key on a line of its own, move the issuers to it, then remove the old one. Setting it says that HS256 tokens of these shared keys are intended, on any address. Empty: the dev secret dataDir/dev-jwt-secret (created when missing), meant for development on loopback: a gateway serving on any other http.host warns that it verifies tokens with it, and refuses to start when the file does not exist yet (a key no token issuer could hold; a misspelled SWITCHBOARD_AUTH_JWKS_URL looks like this).",
    ),
    issuers: list(
      [],
      "Several token issuers, each with the JWKS URL of its keys: entries `issuer=jwksUrl` (split at the first `=`; comma-separated in the variable). A token is checked with the keys of the issuer its `iss` claim names, and only those (a key of one issuer never validates a token that claims another); a token of an issuer not listed is INVALID_TOKEN. For several identity providers (tenants, or a move from one provider to another), instead of auth.jwksUrl and auth.issuer. Empty: not used.",
    ),
    issuer: str("", "Required `iss` claim (empty: not checked)."),
    audience: str(
      "",
      "Required `aud` claim (empty: not checked). Set it with auth.jwksUrl or auth.issuers (a gateway warns at start when it is empty there): without it, any token the issuer signed for another application is accepted.",
    ),
    clockSkewSeconds: int(
      5,
      "Leeway for the difference between the token issuer's clock and this process's: a token is accepted until `exp` plus this many seconds and from `nbf` minus them, and its connection ends that long after `exp`. Without it, a token whose `nbf` is the moment it was issued is refused as invalid (3500: do not reconnect) by a gateway whose clock is a second behind.",
      0,
      300,
    ),
    devTokens: bool(
      false,
      "Dev mode (`switchboard start --dev`, which `npm start` uses): serve GET /v1/dev/token?user=ID, a dev-secret token for any user to anyone who reaches the HTTP port (the web client at / signs in with it). Honoured only without a JWKS URL or auth.secretFile and on a loopback address; never turn it on where others reach the port, e.g. behind a reverse proxy. Where it is honoured (and only there) it also lets a gRPC port open without authentication (no grpc.keyFile, grpc.tokenAudience or grpc.tls.dir), which otherwise stops the process at start.",
    ),
    authTimeoutMs: ms(
      5_000,
      "A connection that has sent no auth frame within this time is closed (3502); checking an auth frame's token longer than this is AUTH_UNAVAILABLE, and checking an upgrade's Authorization header longer than this is HTTP 503.",
      100,
    ),
    allowedOrigins: list(
      [],
      "Allowed Origin headers (exact match). Empty: any Origin. Requests without Origin (native apps) are allowed.",
    ),
  },
  gateway: {
    id: str(
      "",
      "This gateway's id in the routing table (in Kubernetes: the Pod name, which the operator names in gateway-gone records). Empty: hostname:http.host:http.port, so a gateway restarted in place declares its predecessor's sessions gone; with http.port 0, hostname-pid. Set it where machines report the same host name.",
    ),
    advertiseAddress: str(
      "",
      "host:port of this gateway's gRPC server that routers dial for its Deliver stream; it travels in the routing records (in Kubernetes: the Pod IP). Empty: http.host and the gRPC port.",
    ),
    frameBytesMax: int(
      1280 * 1024,
      "Largest WebSocket frame accepted; larger frames close with 1009. The default (1.25 MiB) fits a send with every field at its limit even in JSON with every character escaped as `\\uXXXX`: a 100,000-code-point body takes at most 1,200,000 bytes (12 per character outside the BMP), the other fields under 3 KB. It must be at least 12 × gateway.bodyCharsMax + 3 KiB (3072 bytes): a smaller value stops the process at start.",
      1024,
    ),
    bodyCharsMax: int(
      100_000,
      "Longest message body in characters. On the distributed backend a message is one Kafka record, which must fit the topics' max.message.bytes (the broker's 1 MiB by default): keep this at most 250,000 (4 bytes per character at worst) or raise that limit. A message whose encoding is larger than the topics' limit less 128 KiB (room for what the sequencer adds) is refused with BODY_TOO_LARGE, and a start warns when this setting allows such bodies.",
      1,
    ),
    sendsPerSecond: int(50, "Sustained sends per second per connection (token bucket rate).", 1),
    sendBurst: int(100, "Send burst per connection (token bucket size).", 1),
    userSendsPerSecond: int(200, "Sustained sends per second per user across all their connections.", 1),
    framesPerSecond: int(
      500,
      "Sustained frames of any kind per second per connection; past twice the burst the connection is closed (3013).",
      1,
    ),
    badFramesMax: int(10, "Malformed frames tolerated on one connection before it is closed (3501).", 1),
    sendQueueBytesMax: int(
      4 * 1024 * 1024,
      "Bytes buffered for a slow client before it is closed (3008); it recovers by sync.",
      1024,
    ),
    connectionsMax: int(19_000, "Most open WebSocket connections per gateway process.", 1),
    userConnectionsMax: int(
      100,
      "Most open connections of one user on one gateway process; past it the newest is closed with 3015 (the client retries after a longer backoff), so one user's token cannot take every slot.",
      1,
    ),
    unauthenticatedMax: int(
      2_000,
      "Most connections per gateway process still to authenticate with an auth frame (each may wait auth.authTimeoutMs); past it, an upgrade without an Authorization header gets 503, so unauthenticated sockets cannot take every slot. Upgrades whose Authorization header is being checked (each for up to auth.authTimeoutMs) are limited to as many, counted apart.",
      1,
    ),
    pingIntervalMs: ms(
      25_000,
      "WebSocket ping interval; a connection that has not answered the previous ping by the next one is closed.",
      1000,
    ),
    drainWindowMs: ms(10_000, "Window over which draining spreads client reconnects.", 0),
    shutdownDrainMs: ms(
      0,
      "On SIGTERM, first tell clients to reconnect elsewhere, spread over this window, then stop, as soon as the last of them has gone (with few clients, well before the window ends; the operator sets it for rolling updates); 0: close connections at once (1001), each once the requests it had sent are answered (at most 2 s). From the start of a drain (SIGTERM, or the operator's Drain call) /readyz and the gRPC health service say not ready and /v1/connect answers 503, so that no new client is sent here. SIGINT always stops without a drain, and any second signal during a stop exits at once (shutdownTimeoutMs).",
      0,
    ),
  },
  router: {
    streamQueueBytesMax: int(
      16 * 1024 * 1024,
      "Bytes a router queues on one gateway's Deliver stream when that gateway reads slower than the router routes; past it, that gateway's events are dropped (counted; clients recover them from their inbox) and the other gateways are unaffected.",
      64 * 1024,
    ),
    deliverKeepaliveMs: ms(
      2_000,
      "A router's Deliver stream to a gateway sends an HTTP/2 PING after this long (instead of grpc.keepaliveMs): live delivery to that gateway's clients rides on it, so a stream the network cut silently is closed within deliverKeepaliveMs + grpc.keepaliveTimeoutMs, dialled again and its users' inboxes re-checked.",
      500,
    ),
  },
  groups: {
    membersMax: int(
      100_000,
      "Most members a group may have. Groups past groups.pullThreshold are on the pull model, so a message costs the same however many members there are.",
      2,
    ),
    pullThreshold: int(
      100,
      "Groups with more members than this are on the pull model (docs/protocol.md, Delivery models): a message is stored once and sent live to online members, with no inbox entry per member. A group that grows past it switches for good.",
      1,
    ),
    nameCharsMax: int(200, "Longest group name in characters.", 1),
  },
  presence: {
    heartbeatIntervalMs: ms(5_000, "How often clients heartbeat.", 100),
    offlineAfterMs: ms(
      30_000,
      "A user is shown offline this long after their last device stopped heartbeating. It must be at least twice presence.heartbeatIntervalMs (else the process does not start): a user would flicker offline whenever a heartbeat is late.",
      100,
    ),
  },
  sync: {
    pageSizeMax: int(1_000, "Most messages per sync or history page.", 1),
    pageBytesMax: int(
      1024 * 1024,
      "Most message-body bytes per sync or history page (at least one message is always returned).",
      1024,
    ),
  },
  id: {
    workerId: int(
      0,
      "Snowflake worker id (0-1023); in Kubernetes, the StatefulSet ordinal. Every process that mints ids must have its own: role id, and role all, which mints its own. Several all-in-one processes (role all) sharing the distributed backend's Kafka and Cassandra need a distinct value each, or their message and group ids may collide (they would also share one stored high-water mark, the time the worker issued ids up to, which a restart starts above); one started on the distributed backend without this set is warned about.",
      0,
      1023,
    ),
    batchSize: int(
      256,
      "Ids the gateway fetches from the id service per call, at least: it keeps in stock what the last 10 s of sends took (up to 10,000 a call), so an id service restarting for seconds stalls no send.",
      1,
      10_000,
    ),
  },
  push: {
    webhookUrl: str(
      "",
      "Generic webhook that receives a POST for every notification of an offline user with no registered device (empty: off).",
    ),
    webhookSecretFile: str(
      "",
      'File holding the HMAC key that signs every webhook POST (push.webhookUrl and devices of provider webhook): headers X-Switchboard-Timestamp and X-Switchboard-Signature `v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`; receivers reject timestamps more than 300 s off (docs/adr/0008). Empty: unsigned.',
    ),
    allowPrivateEndpoints: bool(
      false,
      "Let Web Push endpoints and webhook device URLs (both chosen by users) reach loopback, private, link-local and other non-public addresses. Off: a notification to such a device is not sent and the device is pruned, so a user cannot make the push service call services inside the network. push.webhookUrl (that exact URL, for notifications of users with no device) is trusted either way; no push request follows a redirect.",
    ),
    privacyMode: bool(
      false,
      'Leave message text out of every notification: providers (Apple, Google, browser vendors, webhooks) see "New message" as the body.',
    ),
    collapseWindowMs: ms(
      10_000,
      "Messages to the same user in the same conversation within this window after one that notified are held, then summarised in one notification (the latest message and their count) when it closes (0: every message notifies).",
      0,
    ),
    ttlSeconds: int(
      86_400,
      "How long a provider may hold a notification for a device that is off (APNs apns-expiration, FCM ttl, Web Push TTL).",
      0,
      2_419_200,
    ),
    attemptsMax: int(
      5,
      "Attempts per notification and device before it is given up (counted failed); retries back off exponentially with jitter, or wait what the provider's Retry-After says.",
      1,
      100,
    ),
    retryAfterMaxMs: ms(
      300_000,
      "Longest Retry-After a delivery waits for; a provider asking for more gives the delivery up.",
      0,
    ),
    pendingMax: int(
      10_000,
      "Deliveries (notification × device) in flight or waiting to retry in one push process; past it new ones are dropped (counted dropped). One user's are at most 200 of them.",
      1,
    ),
    sendsInFlightMax: int(
      64,
      "Requests in flight to one provider at most (APNs streams on its HTTP/2 connection, FCM, Web Push and webhook requests); the others wait their turn. One user's requests take at most 4 of them at once (their devices' endpoints are theirs to choose, and may never answer).",
      1,
      10_000,
    ),
    apns: {
      keyFile: str(
        "",
        "APNs token-auth signing key (the .p8 file from the Apple developer account). Empty: APNs devices are not notified (counted unconfigured).",
      ),
      keyId: str("", "Key ID of push.apns.keyFile (the JWT's kid)."),
      teamId: str("", "Apple developer team ID (the JWT's iss)."),
      topic: str("", "The app's bundle ID (apns-topic)."),
      environment: oneOf(
        ["production", "development"] as const,
        "production",
        "APNs environment: production (api.push.apple.com) or development (api.sandbox.push.apple.com, for debug builds).",
      ),
      origin: str(
        "",
        "APNs origin overriding push.apns.environment (a proxy or a test stand-in). Empty: Apple's.",
      ),
    },
    fcm: {
      serviceAccountFile: str(
        "",
        "Firebase service-account key JSON (project_id, client_email, private_key, token_uri); its token_uri issues the access tokens. Empty: FCM devices are not notified (counted unconfigured).",
      ),
      origin: str("https://fcm.googleapis.com", "FCM HTTP v1 origin (a proxy or a test stand-in)."),
    },
    webpush: {
      vapidPublicKey: str(
        "",
        "VAPID application server key (uncompressed P-256 point, base64url) that browsers subscribe with. Empty: Web Push devices are not notified (counted unconfigured).",
      ),
      vapidPrivateKeyFile: str(
        "",
        "File holding the VAPID private key (the P-256 scalar, base64url, as `npx web-push generate-vapid-keys` prints it).",
      ),
      subject: str(
        "",
        "VAPID contact for push services (sub claim): a mailto: or https: URL. Required with push.webpush.vapidPublicKey.",
      ),
    },
  },
  kafka: {
    brokers: list(["127.0.0.1:9092"], "Kafka bootstrap servers (distributed backend)."),
    topicPrefix: str(
      "switchboard.",
      "Prefix of the topic names (messages, sequenced, inbox, replies-by-process, replies, routing, push-jobs).",
    ),
    partitions: int(12, "Partitions of the message topics.", 1),
    replicationFactor: int(
      1,
      "Replication factor of the topics (3 in production, with min.insync.replicas 2).",
      1,
    ),
    retentionHours: int(168, "Retention of the message topics, in hours.", 1),
    sequencer: bool(
      true,
      "Role all: also run a sequencer in this process (ADR 0002). Off: the drafts are sequenced by other processes (role sequencer or other platforms), which answer over the replies topic. Split roles ignore it: only role sequencer sequences.",
    ),
    dedupeWindowHours: int(
      168,
      "A resend with the same client_msg_id within this window returns the original; after it, it is a new message (dedupe rows expire). At most 175,200 (20 years: the longest TTL Cassandra takes).",
      1,
      175_200,
    ),
    publishSequenced: bool(
      false,
      "Also publish every sequenced message, with its seq and recipients, to <prefix>sequenced (keyed by conversation) for consumers outside the platform. The platform itself reads the inbox topic; off saves one Kafka record per message.",
    ),
    memberFile: str(
      "",
      "File where the process keeps its consumer-group member ids, so that a restart after a crash rejoins its groups at once instead of waiting out the dead member's 10 s session. Empty: kafka-members-<role>-<port>.json in dataDir, <port> the HTTP port the process listens on (so processes sharing a data dir keep apart files). Put it where a restarted container finds it (an emptyDir).",
    ),
    appendTimeoutMs: ms(
      10_000,
      "A send not sequenced within this time fails with UNAVAILABLE (the client retries with the same client_msg_id): LOG_UNAVAILABLE if Kafka has not acknowledged its draft (still waiting for a produce request: never sent; or in a request the broker has not answered: it may still be written, and the resend is then answered as a duplicate; either way the connection's later sends to the conversation wait for that resend, PREVIOUS_SEND_FAILED), SEQUENCE_TIMEOUT if Kafka took it. A membership change's announcement (a group change, a first send to a new direct conversation) is bounded the same way.",
      100,
    ),
    tls: bool(false, "Connect to the Kafka brokers over TLS."),
    tlsCaFile: str(
      "",
      "PEM file of the CAs that sign the brokers' certificates (empty: the system's). Only with kafka.tls (else the process does not start).",
    ),
    tlsCertFile: str(
      "",
      "PEM client certificate for mutual TLS (empty: none); needs kafka.tls and kafka.tlsKeyFile.",
    ),
    tlsKeyFile: str("", "PEM private key of kafka.tlsCertFile; needs kafka.tls and kafka.tlsCertFile."),
    saslMechanism: oneOf(
      ["none", "plain", "scram-sha-256", "scram-sha-512"] as const,
      "none",
      "SASL mechanism for Kafka.",
    ),
    saslUsername: str("", "SASL user name (in Kubernetes: from the ChatCluster's Secret)."),
    saslPassword: str("", "SASL password (in Kubernetes: from the ChatCluster's Secret)."),
  },
  cassandra: {
    contactPoints: list(["127.0.0.1:9042"], "Cassandra contact points (distributed backend)."),
    datacenter: str("datacenter1", "Local datacenter name."),
    keyspace: str("switchboard", "Keyspace."),
    consistency: oneOf(
      ["LOCAL_QUORUM", "QUORUM", "LOCAL_ONE", "ONE", "EACH_QUORUM", "ALL"] as const,
      "LOCAL_QUORUM",
      "Consistency of reads and writes.",
    ),
    serialConsistency: oneOf(
      ["LOCAL_SERIAL", "SERIAL"] as const,
      "LOCAL_SERIAL",
      "Consistency of the Paxos phase of lightweight transactions (the seq fence).",
    ),
    username: str(
      "",
      "Cassandra user name (empty: no authentication; in Kubernetes: from the ChatCluster's Secret).",
    ),
    password: str("", "Cassandra password; needs cassandra.username."),
    tls: bool(false, "Connect to Cassandra over TLS."),
    tlsCaFile: str(
      "",
      "PEM file of the CAs that sign the nodes' certificates (empty: the system's). Only with cassandra.tls (else the process does not start).",
    ),
    replicationFactor: int(
      1,
      "SimpleStrategy replication factor of the keyspace when the platform creates it (production: create it with NetworkTopologyStrategy).",
      1,
    ),
  },
  metrics: {
    enabled: bool(
      true,
      "Serve Prometheus metrics on /metrics (of http.internalPort when set, else of http.port).",
    ),
  },
  tracing: {
    enabled: bool(
      false,
      "Export OpenTelemetry traces of the message path over OTLP. Where to and how come from the standard variables: OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318), OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf, http/json or grpc), OTEL_SERVICE_NAME (default switchboard-<role>, or switchboard for role all), OTEL_RESOURCE_ATTRIBUTES. Off: no span is made.",
    ),
    sampleRatio: ratio(
      1,
      "Share of new traces recorded (parent-based: a send whose client's traceparent is sampled is always recorded, one that is not never). 0.01 to 0.1 is usual in production.",
    ),
  },
  log: {
    level: oneOf(
      ["debug", "info", "warn", "error"] as const,
      "info",
      "Lowest level of the log lines written to stderr (one JSON object per line). debug adds, among others, the Kafka responses kafkajs retries by design (a group coordinator being elected, a rebalance), which it would otherwise print as errors.",
    ),
  },
} as const;

type Shape<S> = S extends Setting<infer T> ? T : { -readonly [K in keyof S]: Shape<S[K]> };
export type Config = Shape<typeof schema>;

function isSetting(node: unknown): node is Setting<unknown> {
  return typeof node === "object" && node !== null && "parse" in node && "doc" in node;
}

/** SWITCHBOARD_GATEWAY_FRAME_BYTES_MAX for ["gateway", "frameBytesMax"]. */
export function envName(path: readonly string[]): string {
  return `SWITCHBOARD_${path.map((p) => p.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase()).join("_")}`;
}

function walk(node: unknown, path: string[], visit: (path: string[], s: Setting<unknown>) => void): void {
  if (isSetting(node)) return visit(path, node);
  for (const [k, v] of Object.entries(node as Record<string, unknown>)) walk(v, [...path, k], visit);
}

/** Every setting's dotted name ("gateway.frameBytesMax"), in the tree's order. */
export function settingNames(): string[] {
  const names: string[] = [];
  walk(schema, [], (path) => names.push(path.join(".")));
  return names;
}

/** Overrides are dotted paths ("http.port") with raw string values, e.g. from CLI flags. */
export function loadConfig(
  env: NodeJS.ProcessEnv = process.env,
  overrides: Record<string, string> = {},
): Config {
  const out: Record<string, unknown> = {};
  walk(schema, [], (path, setting) => {
    const dotted = path.join(".");
    const raw = overrides[dotted] ?? env[envName(path)];
    let value: unknown = setting.default;
    if (raw !== undefined) {
      try {
        value = setting.parse(raw);
      } catch (err) {
        const source = overrides[dotted] !== undefined ? `--${dotted}` : envName(path);
        throw new Error(`invalid configuration ${source}=${JSON.stringify(raw)}: ${(err as Error).message}`);
      }
    }
    let target = out;
    for (const p of path.slice(0, -1)) {
      target[p] ??= {};
      target = target[p] as Record<string, unknown>;
    }
    target[path[path.length - 1]!] = Array.isArray(value) ? [...value] : value;
  });
  for (const key of Object.keys(overrides)) {
    let node: unknown = schema;
    for (const p of key.split(".")) node = (node as Record<string, unknown>)?.[p];
    if (!isSetting(node)) throw new Error(`unknown configuration key ${key}`);
  }
  const config = out as Config;
  checkConfig(config);
  return config;
}

/** "gateway.frameBytesMax (SWITCHBOARD_GATEWAY_FRAME_BYTES_MAX)": how an error names a setting. */
const named = (dotted: string) => `${dotted} (${envName(dotted.split("."))})`;

/**
 * Settings that are valid alone but not together: the process would start and misbehave (frames the
 * protocol promises to accept refused, users flickering offline) or ignore a setting silently (a CA
 * file without TLS). Throws naming both settings.
 */
export function checkConfig(config: Config): void {
  const fail = (a: string, b: string, why: string) => {
    throw new Error(`invalid configuration: ${named(a)} and ${named(b)}: ${why}`);
  };
  const h = config.http;
  const ownPort = `both are ${h.internalPort}: the internal port (/healthz, /readyz, /metrics) needs a port of its own (0 turns it off)`;
  if (h.internalPort !== 0 && h.internalPort === h.port) fail("http.internalPort", "http.port", ownPort);
  // A non-zero grpc.port opens gRPC in every role that serves it, role all included.
  if (h.internalPort !== 0 && h.internalPort === config.grpc.port)
    fail("http.internalPort", "grpc.port", ownPort);
  const g = config.gateway;
  const frameBytesMin = 12 * g.bodyCharsMax + 3 * 1024;
  if (g.frameBytesMax < frameBytesMin)
    fail(
      "gateway.frameBytesMax",
      "gateway.bodyCharsMax",
      `frameBytesMax ${g.frameBytesMax} must be at least 12 × bodyCharsMax + 3 KiB = ${frameBytesMin} (a send at the body limit, escaped as JSON, must fit in a frame)`,
    );
  const p = config.presence;
  // Twice: a heartbeat a little late (a busy client, a slow network) must not show its user offline.
  if (p.offlineAfterMs < 2 * p.heartbeatIntervalMs)
    fail(
      "presence.offlineAfterMs",
      "presence.heartbeatIntervalMs",
      `offlineAfterMs ${p.offlineAfterMs} must be at least twice heartbeatIntervalMs ${p.heartbeatIntervalMs} (users would flicker offline when a heartbeat is late)`,
    );
  const k = config.kafka;
  if (k.tlsCertFile !== "" && k.tlsKeyFile === "")
    fail("kafka.tlsCertFile", "kafka.tlsKeyFile", "a client certificate needs its private key");
  if (k.tlsKeyFile !== "" && k.tlsCertFile === "")
    fail("kafka.tlsKeyFile", "kafka.tlsCertFile", "a private key needs its client certificate");
  for (const file of ["tlsCaFile", "tlsCertFile", "tlsKeyFile"] as const)
    if (k[file] !== "" && !k.tls)
      fail(`kafka.${file}`, "kafka.tls", `kafka.${file} is set but TLS is off: set kafka.tls to true`);
  const c = config.cassandra;
  if (c.tlsCaFile !== "" && !c.tls)
    fail(
      "cassandra.tlsCaFile",
      "cassandra.tls",
      "cassandra.tlsCaFile is set but TLS is off: set cassandra.tls to true",
    );
  if (c.password !== "" && c.username === "")
    fail("cassandra.password", "cassandra.username", "a password without a user name is not used");
}

/** SWITCHBOARD_* variables that are not settings: the client commands' defaults and the test harness's. */
const NOT_SETTINGS =
  /^SWITCHBOARD_(URL|TOKEN|KEY|CACHE|TEST_BACKEND|NODE_AGENT_[A-Z0-9_]+|BENCH_[A-Z0-9_]+)$/;

/**
 * The variables Kubernetes sets for every Service of the namespace: a Service named
 * `switchboard-operator` gives SWITCHBOARD_OPERATOR_SERVICE_HOST, SWITCHBOARD_OPERATOR_PORT
 * (tcp://…), SWITCHBOARD_OPERATOR_PORT_8081_TCP_ADDR and more.
 */
function isServiceLink(name: string, value: string | undefined): boolean {
  if (/_SERVICE_(HOST|PORT(_[A-Z0-9_]+)?)$/.test(name)) return true;
  if (/_PORT_[0-9]+_(TCP|UDP|SCTP)(_(ADDR|PORT|PROTO))?$/.test(name)) return true;
  return /_PORT$/.test(name) && /^(tcp|udp|sctp):\/\//.test(value ?? "");
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++)
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length]!;
}

export interface UnknownVariable {
  name: string;
  /** The setting's variable it most resembles, when one is close. */
  didYouMean?: string;
}

/**
 * The SWITCHBOARD_* variables of `env` that name no setting: loadConfig ignores them, so a misspelled
 * one (SWITCHBOARD_AUTH_JWKSURL) silently leaves its setting at the default. Each comes with the
 * nearest setting's variable when one is near (the same letters without underscores, or a few edits).
 */
export function unknownVariables(env: NodeJS.ProcessEnv): UnknownVariable[] {
  const known: string[] = [];
  walk(schema, [], (path) => known.push(envName(path)));
  const squash = (name: string) => name.replace(/_/g, "");
  const out: UnknownVariable[] = [];
  for (const name of Object.keys(env).sort()) {
    if (!name.startsWith("SWITCHBOARD_") || known.includes(name)) continue;
    if (NOT_SETTINGS.test(name) || isServiceLink(name, env[name])) continue;
    let best: { name: string; distance: number } | undefined;
    for (const candidate of known) {
      const distance = squash(candidate) === squash(name) ? 0 : editDistance(candidate, name);
      if (!best || distance < best.distance) best = { name: candidate, distance };
    }
    const near = best && best.distance <= Math.max(2, Math.floor(name.length / 8));
    out.push(near ? { name, didYouMean: best!.name } : { name });
  }
  return out;
}

/** The configuration reference as a Markdown table (used for the README). */
export function configDocs(): string {
  const rows = ["| setting | environment | default | meaning |", "|---|---|---|---|"];
  walk(schema, [], (path, s) => {
    const def = Array.isArray(s.default) ? s.default.join(",") : String(s.default);
    rows.push(`| \`${path.join(".")}\` | \`${envName(path)}\` | \`${def}\` | ${s.doc} |`);
  });
  return rows.join("\n");
}
