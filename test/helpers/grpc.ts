/**
 * What the gRPC tests share: the TCP ports a process listens on (read from /proc, so that a test
 * sees every port, not only those the process reports), a free port, and grpcurl (installed by
 * test/infra/grpcurl/up.sh from the Go module proxy).
 */
import { execFile } from "node:child_process";
import { readdir, readFile, readlink } from "node:fs/promises";
import { createServer } from "node:net";
import { ensureServer } from "../infra/servers.js";

/** The TCP ports process `pid` listens on (IPv4 and IPv6), ascending. */
export async function listeningPorts(pid: number): Promise<number[]> {
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "");
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m) inodes.add(m[1]!);
  }
  const ports = new Set<number>();
  for (const table of ["tcp", "tcp6"]) {
    const text = await readFile(`/proc/${pid}/net/${table}`, "utf8").catch(() => "");
    for (const line of text.split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      // local_address is HEXIP:HEXPORT; st 0A is LISTEN; column 9 is the socket's inode.
      if (cols.length < 10 || cols[3] !== "0A" || !inodes.has(cols[9]!)) continue;
      ports.add(Number.parseInt(cols[1]!.split(":")[1]!, 16));
    }
  }
  return [...ports].sort((a, b) => a - b);
}

/** A TCP port nothing listens on right now (bound and released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/**
 * The grpcurl binary. A missing Go toolchain or an unreachable module proxy is a test failure that
 * says so (up.sh's message), never a skip: CI must not pass without having run grpcurl.
 */
export async function grpcurlPath(): Promise<string> {
  let env: Record<string, string>;
  try {
    env = await ensureServer("grpcurl");
  } catch (err) {
    throw new Error(
      `grpcurl is needed by this test and could not be installed (test/infra/up.sh grpcurl; it builds it with Go from the module proxy):\n${(err as Error).message}`,
    );
  }
  if (!env.GRPCURL) throw new Error("test/infra/up.sh grpcurl printed no GRPCURL= line");
  return env.GRPCURL;
}

/** Runs grpcurl; resolves with its exit code and output whatever the code. */
export function grpcurl(
  bin: string,
  args: string[],
  options: { cwd?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(bin, args, { timeout: 30_000, cwd: options.cwd }, (err, stdout, stderr) => {
      if (err && typeof err.code !== "number") return reject(err);
      resolve({ code: typeof err?.code === "number" ? err.code : 0, stdout, stderr });
    });
  });
}
