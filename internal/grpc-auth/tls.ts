/**
 * mTLS on the gRPC port and on the process's calls to other roles (ADR 0007), from `grpc.tls.dir`
 * (a mounted cert-manager Secret: tls.crt, tls.key, ca.crt), built on grpc-js's certificate-provider
 * credentials, which take the provider's newest version for every new connection:
 * - the server presents tls.crt and requires a client certificate signed by a CA of ca.crt (the
 *   handshake refuses none, another CA's, an expired one; with grpc.tls.clientCertificate optional,
 *   none is let through for bearer callers); the guard then takes the principal from it
 *   (certificates.ts) and checks it on every call;
 * - the process's own calls present the same key pair (its certificate names its role:
 *   `switchboard://role:<role>`, usages server and client auth) and accept a server only if its
 *   certificate is signed by a CA of ca.crt and names the role being called. The identity is checked
 *   instead of a host name: roles dial Pod IPs (a router dials each gateway's), which no certificate
 *   names, and a certificate of the same CA issued to a backend client must not pass for a role.
 */
import { X509Certificate } from "node:crypto";
import type { PeerCertificate } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import type { Config } from "../lib/config.js";
import type { Logger } from "../lib/log.js";
import { identityOf } from "./certificates.js";
import type { RoleName } from "./policy.js";
import { TlsDirectory } from "./tls-directory.js";

/** What a client of one role's servers needs (GrpcClientOptions.credentials and .serverName). */
export interface RoleChannel {
  readonly credentials: grpc.ChannelCredentials;
  readonly serverName: string;
}

export interface GrpcTls {
  readonly directory: TlsDirectory;
  readonly serverCredentials: grpc.ServerCredentials;
  /** Credentials for calls to `role`'s servers (one per role, shared by its channels). */
  channelTo(role: RoleName): RoleChannel;
  /** Stops watching the directory. */
  close(): void;
}

/** mTLS from `grpc.tls.dir`, or undefined when it is empty. Throws if the directory is not whole. */
export function grpcTls(config: Config, log: Logger): GrpcTls | undefined {
  const { dir, refreshMs, clientCertificate } = config.grpc.tls;
  if (dir === "") return undefined;
  const directory = new TlsDirectory(dir, refreshMs, log);
  // One provider for both the identity and the CAs: the two are always of the same version. Optional
  // client certificates are still requested (and then checked per call, certificates.ts).
  const serverCredentials = grpc.experimental.createCertificateProviderServerCredentials(
    directory,
    directory,
    clientCertificate === "require",
  );
  const channels = new Map<RoleName, RoleChannel>();
  return {
    directory,
    serverCredentials,
    channelTo: (role) => {
      let channel = channels.get(role);
      if (!channel) {
        channel = {
          credentials: grpc.experimental.createCertificateProviderChannelCredentials(directory, directory, {
            checkServerIdentity: serverIdentityCheck(`role:${role}`),
          }),
          serverName: `${role}.switchboard`,
        };
        channels.set(role, channel);
      }
      return channel;
    },
    close: () => directory.close(),
  };
}

/** Accepts a server (whose chain TLS has verified) only if its certificate names `expected`. */
export function serverIdentityCheck(expected: string) {
  return (_host: string, cert: PeerCertificate): Error | undefined => {
    const identity = cert.raw ? identityOf(new X509Certificate(cert.raw)) : undefined;
    return identity === expected
      ? undefined
      : new Error(
          `gRPC TLS: the server's certificate names ${identity ?? "no switchboard:// identity"}, expected ${expected}`,
        );
  };
}
