/**
 * Before any kube test: the control plane (test/infra/up.sh kube) is installed and running. On a fresh
 * machine its binaries are built from the Go module proxy first, which takes longer than a test
 * hook may wait (about 9 minutes on 2 cores); a global setup has no hook timeout, only
 * ensureServer's own bound. A failure here fails the run with up.sh's message, never a skip.
 */
import { ensureServer } from "../infra/servers.js";

export default async function setup(): Promise<void> {
  await ensureServer("kube");
}
