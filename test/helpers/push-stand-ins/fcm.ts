/**
 * An OAuth2 token endpoint and an FCM HTTP v1 `messages:send` stand-in. The token endpoint accepts
 * only the JWT-bearer grant whose assertion verifies with the public half of the test service
 * account's key (RS256, iss = client_email, aud = token_uri, the firebase.messaging scope, at most an
 * hour); `messages:send` accepts only a bearer it issued and has not expired, for the right project.
 */
import { generateKeyPairSync, type KeyObject, randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { jwtVerify } from "jose";
import { encodeBody, Script, type ScriptedAnswer } from "./scripted.js";

export interface FcmDelivery {
  message: {
    token: string;
    notification?: { title?: string; body?: string };
    data?: Record<string, string>;
    android?: { collapse_key?: string; ttl?: string; priority?: string };
    apns?: { headers?: Record<string, string> };
    webpush?: { headers?: Record<string, string> };
  };
}

export class FcmStandIn {
  readonly projectId = "switchboard-test";
  readonly clientEmail = "push@switchboard-test.iam.gserviceaccount.com";
  readonly script = new Script();
  readonly delivered: FcmDelivery[] = [];
  /** Access tokens granted, with their expiry (ms). */
  readonly granted = new Map<string, number>();
  /** Lifetime of the access tokens it grants. */
  tokenLifetimeSeconds = 3600;
  private readonly privateKeyPem: string;
  private readonly publicKey: KeyObject;
  private readonly server: Server;
  origin = "";

  constructor() {
    const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    this.privateKeyPem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    this.publicKey = publicKey;
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        this.handle(req, res, Buffer.concat(chunks).toString("utf8")).catch((err: unknown) => {
          this.script.violation(`stand-in failed: ${String(err)}`);
          res.writeHead(500).end();
        });
      });
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.origin = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  get tokenUri(): string {
    return `${this.origin}/token`;
  }

  /** A service-account key file as the Google Cloud console downloads it (the fields that matter). */
  serviceAccountJson(): string {
    return JSON.stringify({
      type: "service_account",
      project_id: this.projectId,
      private_key_id: "test",
      private_key: this.privateKeyPem,
      client_email: this.clientEmail,
      token_uri: this.tokenUri,
    });
  }

  private async handle(req: IncomingMessage, res: ServerResponse, body: string): Promise<void> {
    const reply = (a: ScriptedAnswer) => {
      res.writeHead(a.status, { "content-type": "application/json", ...a.headers }).end(encodeBody(a.body));
    };
    const refuse = (status: number, error: string) => {
      this.script.violation(error);
      reply({ status, body: { error: { code: status, status: error, message: error } } });
    };
    if (req.method === "POST" && req.url === "/token") return this.grant(body, reply, refuse);
    if (req.method !== "POST" || req.url !== `/v1/projects/${this.projectId}/messages:send`) {
      return refuse(404, "NOT_FOUND");
    }
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1];
    const expiresAt = bearer ? this.granted.get(bearer) : undefined;
    if (expiresAt === undefined || expiresAt < Date.now()) return refuse(401, "UNAUTHENTICATED");
    let delivery: FcmDelivery;
    try {
      delivery = JSON.parse(body) as FcmDelivery;
    } catch {
      return refuse(400, "INVALID_JSON");
    }
    const token = delivery.message?.token;
    if (typeof token !== "string" || token === "") return refuse(400, "INVALID_ARGUMENT");
    const ttl = delivery.message.android?.ttl;
    if (ttl !== undefined && !/^\d+(\.\d+)?s$/.test(ttl)) return refuse(400, "INVALID_ARGUMENT");
    const answer = this.script.answer(token, {
      status: 200,
      body: { name: `projects/${this.projectId}/messages/${randomBytes(8).toString("hex")}` },
    });
    if (answer.status === 200) this.delivered.push(delivery);
    reply(answer);
  }

  private async grant(
    body: string,
    reply: (a: ScriptedAnswer) => void,
    refuse: (status: number, error: string) => void,
  ): Promise<void> {
    const form = new URLSearchParams(body);
    if (form.get("grant_type") !== "urn:ietf:params:oauth:grant-type:jwt-bearer") {
      return refuse(400, "unsupported_grant_type");
    }
    try {
      const { payload } = await jwtVerify(form.get("assertion") ?? "", this.publicKey, {
        algorithms: ["RS256"],
        issuer: this.clientEmail,
        audience: this.tokenUri,
        requiredClaims: ["iat", "exp"],
      });
      const scopes = String(payload.scope ?? "").split(" ");
      if (!scopes.includes("https://www.googleapis.com/auth/firebase.messaging")) {
        return refuse(400, "invalid_scope");
      }
      if (Number(payload.exp) - Number(payload.iat) > 3600) return refuse(400, "invalid_grant");
    } catch {
      return refuse(400, "invalid_grant");
    }
    const accessToken = `ya29.${randomBytes(16).toString("hex")}`;
    this.granted.set(accessToken, Date.now() + this.tokenLifetimeSeconds * 1000);
    reply({
      status: 200,
      body: { access_token: accessToken, expires_in: this.tokenLifetimeSeconds, token_type: "Bearer" },
    });
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
