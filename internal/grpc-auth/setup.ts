/**
 * A process's gRPC authentication from its configuration (ADR 0007): the guard its server runs every
 * call past, and the credential its own calls to other roles carry.
 */
import { readFileSync, statSync } from "node:fs";
import type { Config } from "../lib/config.js";
import type { Logger } from "../lib/log.js";
import type { CallGuard } from "../lib/rpc.js";
import { type Authenticator, callGuard } from "./guard.js";
import { KeyFile } from "./key-file.js";
import {
  type ClientGrant,
  isPrincipal,
  PERMISSIONS,
  type Permission,
  type Policy,
  type Principal,
} from "./policy.js";
import { kubeTokenReviewer, ServiceAccountTokens } from "./service-account-tokens.js";

/** How often a credential or key file is looked at again for a change. */
const FILE_RECHECK_MS = 60_000;
const KEY_FILE_RECHECK_MS = 5_000;

/** The guard of this process's gRPC server, or undefined when no authentication is configured. */
export async function grpcGuard(config: Config, log: Logger): Promise<CallGuard | undefined> {
  const g = config.grpc;
  if (g.keyFile === "" && g.tokenAudience === "") return undefined;
  const authenticators: Authenticator[] = [];
  if (g.keyFile !== "") {
    const keys = watchedKeyFile(g.keyFile, log);
    authenticators.push((bearer) => keys().verify(bearer));
  }
  if (g.tokenAudience !== "") {
    const tokens = new ServiceAccountTokens({
      reviewer: await kubeTokenReviewer(),
      audience: g.tokenAudience,
      accounts: serviceAccounts(g.serviceAccounts),
    });
    authenticators.push(async (bearer) => {
      // Only what looks like a JWT goes to the API server: a static key never leaves the process.
      if (bearer.split(".").length !== 3) return undefined;
      return tokens.verify(bearer);
    });
  }
  return callGuard(authenticators, policyOf(g.clients));
}

/** This process's credential for its calls to other roles (undefined: none configured). */
export function grpcCredential(config: Config): (() => string | undefined) | undefined {
  const file = config.grpc.credentialFile;
  if (file === "") return undefined;
  let value = readCredential(file);
  let readAtMs = Date.now();
  return () => {
    // Projected tokens are rotated by the kubelet; a failed re-read keeps the last good credential.
    if (Date.now() - readAtMs > FILE_RECHECK_MS) {
      readAtMs = Date.now();
      try {
        value = readCredential(file);
      } catch {}
    }
    return value;
  };
}

function readCredential(file: string): string {
  const value = readFileSync(file, "utf8").trim();
  if (value === "") throw new Error(`grpc.credentialFile ${file} is empty`);
  return value;
}

/** The key file, re-parsed when its modification time changes; a broken new version keeps the old. */
function watchedKeyFile(file: string, log: Logger): () => KeyFile {
  const load = () => KeyFile.parse(readFileSync(file, "utf8"), file);
  let keys = load();
  let mtimeMs = statSync(file).mtimeMs;
  let checkedAtMs = Date.now();
  return () => {
    if (Date.now() - checkedAtMs > KEY_FILE_RECHECK_MS) {
      checkedAtMs = Date.now();
      try {
        const m = statSync(file).mtimeMs;
        if (m !== mtimeMs) {
          keys = load();
          mtimeMs = m;
          log.info("grpc.keyFile re-read", { keys: keys.size });
        }
      } catch (err) {
        log.warn("grpc.keyFile could not be re-read; the previous keys stay in force", { err });
      }
    }
    return keys;
  };
}

function serviceAccounts(entries: readonly string[]): Map<string, Principal> {
  const out = new Map<string, Principal>();
  for (const entry of entries) {
    const m = /^([a-z0-9-]+\/[a-z0-9.-]+)=(.+)$/.exec(entry);
    if (!m || !isPrincipal(m[2]!))
      throw new Error(`grpc.serviceAccounts: "${entry}" is not namespace/name=principal`);
    out.set(m[1]!, m[2]);
  }
  return out;
}

/** The clients' grants from `name=permission+permission` entries. */
export function policyOf(entries: readonly string[]): Policy {
  const clients = new Map<string, ClientGrant>();
  for (const entry of entries) {
    const m = /^([a-z0-9-]+)=([A-Za-z+]*)$/.exec(entry);
    const permissions = (m?.[2] ?? "").split("+").filter(Boolean);
    const unknown = permissions.filter((p) => !(PERMISSIONS as readonly string[]).includes(p));
    if (!m || !isPrincipal(`client:${m[1]}`) || unknown.length > 0)
      throw new Error(
        `grpc.clients: "${entry}" is not name=permission+… (permissions: ${PERMISSIONS.join(", ")})`,
      );
    clients.set(m[1]!, { permissions: new Set(permissions as Permission[]) });
  }
  return { clients };
}
