/**
 * The operator's credential for its gRPC calls to a ChatCluster's gateways (Drain, Stats; ADR 0007): a
 * token of its own ServiceAccount bound to that cluster's audience, asked of the API server
 * (TokenRequest, `serviceaccounts/token: create` on its own account only) and kept until 80 % of its
 * life has passed. The roles map the account to the `operator` principal (grpc-identity.ts).
 */
import type { KubeClient } from "../kube/client.js";
import type { AccountRef } from "./grpc-identity.js";

/** Asked lifetime of a token; renewed at 80 % of what the API server granted. */
const TOKEN_SECONDS = 3600;
const RENEW_AT = 0.8;

interface Issued {
  token: string;
  renewAtMs: number;
}

export class OperatorTokens {
  private readonly issued = new Map<string, Issued>();
  private readonly pending = new Map<string, Promise<string>>();

  constructor(
    private readonly kube: KubeClient,
    private readonly account: AccountRef,
    private readonly now: () => number = Date.now,
  ) {}

  /** A valid token for `audience`, from the cache or a new TokenRequest. */
  async token(audience: string): Promise<string> {
    const hit = this.issued.get(audience);
    if (hit && hit.renewAtMs > this.now()) return hit.token;
    let request = this.pending.get(audience);
    if (!request) {
      request = this.request(audience).finally(() => this.pending.delete(audience));
      this.pending.set(audience, request);
    }
    return request;
  }

  private async request(audience: string): Promise<string> {
    const { namespace, name } = this.account;
    const path = `/api/v1/namespaces/${encodeURIComponent(namespace)}/serviceaccounts/${encodeURIComponent(name)}/token`;
    const startedMs = this.now();
    const res = (await this.kube.request("POST", path, {
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenRequest",
      spec: { audiences: [audience], expirationSeconds: TOKEN_SECONDS },
    })) as { status?: { token?: string; expirationTimestamp?: string } };
    const token = res.status?.token;
    if (!token)
      throw new Error(`TokenRequest for ${namespace}/${name} (audience ${audience}) returned no token`);
    const expiresMs = Date.parse(res.status?.expirationTimestamp ?? "") || startedMs + TOKEN_SECONDS * 1000;
    this.issued.set(audience, { token, renewAtMs: startedMs + (expiresMs - startedMs) * RENEW_AT });
    return token;
  }
}
