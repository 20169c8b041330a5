/**
 * An APNs stand-in: HTTP/2 over TLS (a certificate of a test CA), answering like api.push.apple.com.
 * Each request must carry a provider token that verifies with the public half of the test .p8 key
 * (ES256, kid, iss = team, iat within the hour) and the headers APNs requires; a request that does not
 * is answered the way APNs answers it (403 InvalidProviderToken, 400 MissingTopic, …) and recorded as
 * a protocol violation.
 */
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import {
  constants,
  createSecureServer,
  type Http2SecureServer,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from "node:http2";
import type { AddressInfo } from "node:net";
import { decodeProtectedHeader, jwtVerify } from "jose";
import { TestPki } from "../certificates.js";
import { encodeBody, Script, type ScriptedAnswer } from "./scripted.js";

export interface ApnsDelivery {
  token: string;
  headers: IncomingHttpHeaders;
  payload: { aps: { alert: { title: string; body: string }; "thread-id"?: string }; [key: string]: unknown };
}

export class ApnsStandIn {
  readonly keyId = "KEY1234567";
  readonly teamId = "TEAM123456";
  readonly topic = "dev.switchboard.app";
  /** The .p8 the provider signs with (PKCS#8 PEM). */
  readonly keyPem: string;
  /** Trust this CA to reach the stand-in. */
  readonly ca: string;
  readonly script = new Script();
  readonly delivered: ApnsDelivery[] = [];
  /** Distinct provider tokens seen (their renewal is part of the protocol). */
  readonly providerTokens = new Set<string>();
  private readonly publicKey: KeyObject;
  private readonly pki = new TestPki();
  private server!: Http2SecureServer;
  origin = "";

  constructor() {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    this.keyPem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    this.publicKey = publicKey;
    const ca = this.pki.ca("apns-ca");
    this.ca = ca.cert;
    const leaf = this.pki.issue(ca, { cn: "localhost" });
    this.server = createSecureServer({ key: leaf.key, cert: leaf.cert, allowHTTP1: false });
    this.server.on("stream", (stream, headers) => {
      const chunks: Buffer[] = [];
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        this.handle(stream, headers, Buffer.concat(chunks)).catch((err: unknown) => {
          this.script.violation(`stand-in failed: ${String(err)}`);
          stream.respond({ ":status": 500 });
          stream.end();
        });
      });
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.origin = `https://localhost:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  private async handle(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, body: Buffer): Promise<void> {
    const reply = (a: ScriptedAnswer) => {
      stream.respond({ ":status": a.status, ...a.headers });
      stream.end(encodeBody(a.body));
    };
    const refuse = (status: number, reason: string) => {
      this.script.violation(reason);
      reply({ status, body: { reason } });
    };
    const path = String(headers[constants.HTTP2_HEADER_PATH]);
    const match = /^\/3\/device\/([0-9a-fA-F]+)$/.exec(path);
    if (headers[constants.HTTP2_HEADER_METHOD] !== "POST") return refuse(405, "MethodNotAllowed");
    if (!match) return refuse(404, "BadPath");
    const auth = String(headers.authorization ?? "");
    if (!auth.startsWith("bearer ")) return refuse(403, "MissingProviderToken");
    const jwt = auth.slice("bearer ".length);
    try {
      const header = decodeProtectedHeader(jwt);
      if (header.alg !== "ES256" || header.kid !== this.keyId) return refuse(403, "InvalidProviderToken");
      const { payload } = await jwtVerify(jwt, this.publicKey, {
        issuer: this.teamId,
        algorithms: ["ES256"],
      });
      const age = Date.now() / 1000 - Number(payload.iat);
      if (!(age >= -60 && age < 3600)) return refuse(403, "ExpiredProviderToken");
    } catch {
      return refuse(403, "InvalidProviderToken");
    }
    this.providerTokens.add(jwt);
    if (headers["apns-topic"] !== this.topic) return refuse(400, "MissingTopic");
    const pushTypes = ["alert", "background", "voip", "complication", "fileprovider", "mdm", "liveactivity"];
    if (!pushTypes.includes(String(headers["apns-push-type"]))) return refuse(400, "InvalidPushType");
    if (!/^\d+$/.test(String(headers["apns-expiration"] ?? ""))) return refuse(400, "BadExpirationDate");
    const collapse = headers["apns-collapse-id"];
    if (collapse !== undefined && Buffer.byteLength(String(collapse)) > 64)
      return refuse(400, "BadCollapseId");
    if (!["5", "10", undefined].includes(headers["apns-priority"] as string | undefined)) {
      return refuse(400, "BadPriority");
    }
    if (body.length > 4096) return refuse(413, "PayloadTooLarge");
    let payload: ApnsDelivery["payload"];
    try {
      payload = JSON.parse(body.toString("utf8")) as ApnsDelivery["payload"];
      if (typeof payload.aps !== "object") return refuse(400, "PayloadEmpty");
    } catch {
      return refuse(400, "BadPayload");
    }
    const token = match[1]!;
    const answer = this.script.answer(token, {
      status: 200,
      headers: { "apns-id": "00000000-0000-0000-0000-000000000001" },
    });
    if (answer.status === 200) this.delivered.push({ token, headers, payload });
    reply(answer);
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.pki.close();
  }
}
