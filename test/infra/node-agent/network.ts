/**
 * Making the Pod CIDR reachable on this host, the one piece of network setup the agent does (a CNI
 * plugin's job on a real node).
 *
 * Every Pod IP must be an address this host owns, so a Pod's process can bind it and every other
 * process can connect to it. 127.0.0.0/8 already is (the kernel's `local 127.0.0.0/8 dev lo` route),
 * but the API server refuses loopback addresses in EndpointSlices and Endpoints ("may not be in the
 * loopback range"), so Pods with 127.x IPs never become Service endpoints. Any other range is made
 * local the same way the kernel does it for 127/8: `ip route add local <cidr> dev lo` (root, needs
 * CAP_NET_ADMIN). The route is removed on a clean shutdown when this agent (or a previous run of it
 * with the same state dir, which left a marker file) added it.
 */
import { execFileSync } from "node:child_process";
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../../../internal/lib/log.js";
import { numberToIp, parseCidr } from "./ipam.js";

const LOOPBACK = parseCidr("127.0.0.0/8");

/** The CIDR in canonical form (network address/prefix). */
function canonical(cidr: string): string {
  const c = parseCidr(cidr);
  return `${numberToIp(c.base)}/${c.prefix}`;
}

/** True when the whole CIDR lies in 127.0.0.0/8 (local already; unusable in EndpointSlices). */
export function isLoopbackCidr(cidr: string): boolean {
  const c = parseCidr(cidr);
  return c.base >= LOOPBACK.base && c.base + c.size <= LOOPBACK.base + LOOPBACK.size;
}

export class PodNetwork {
  private readonly cidr: string;
  private readonly marker: string;
  private owned = false;

  constructor(
    cidr: string,
    stateDir: string,
    private readonly log: Logger,
  ) {
    this.cidr = canonical(cidr);
    this.marker = join(stateDir, "local-route");
  }

  /** Adds the local route unless the range is loopback or already routed locally. */
  setUp(): void {
    if (isLoopbackCidr(this.cidr)) return;
    const routes = execFileSync("ip", ["-4", "route", "show", "table", "local"], { encoding: "utf8" });
    const present = routes.split("\n").some((l) => l.startsWith(`local ${this.cidr} `));
    if (present) {
      // Ours when a previous run of this agent added it and died before removing it.
      this.owned = existsSync(this.marker);
      return;
    }
    try {
      execFileSync("ip", ["route", "add", "local", this.cidr, "dev", "lo"], {
        stdio: ["ignore", "ignore", "pipe"],
      });
    } catch (err) {
      const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
      throw new Error(
        `could not make the pod CIDR ${this.cidr} local (ip route add local ${this.cidr} dev lo: ${stderr || (err as Error).message}); the agent needs root with CAP_NET_ADMIN, or a pod CIDR inside 127.0.0.0/8`,
      );
    }
    writeFileSync(this.marker, `${this.cidr}\n`);
    this.owned = true;
    this.log.info("pod CIDR routed locally", { cidr: this.cidr });
  }

  /** Removes the route if this agent added it. */
  tearDown(): void {
    if (!this.owned) return;
    try {
      execFileSync("ip", ["route", "del", "local", this.cidr, "dev", "lo"], { stdio: "ignore" });
    } catch (err) {
      this.log.warn("could not remove the pod CIDR route", { cidr: this.cidr, err });
    }
    rmSync(this.marker, { force: true });
    this.owned = false;
  }
}
