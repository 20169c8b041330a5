/**
 * Pod IP allocation from the node's pod CIDR (IPv4 only). Pure bookkeeping, no I/O: the agent owns
 * one pool and tells it which Pods hold which address.
 *
 * Why next-fit (a cursor that moves on) rather than lowest-free: an address released by a deleted Pod
 * is not handed to the next Pod at once, so a client still talking to the old Pod's IP (an
 * EndpointSlice not yet updated, a cached DNS answer) does not silently reach a different Pod. This
 * is what CNI's host-local IPAM does too.
 *
 * The first address of the range is the network and the last the broadcast address (never handed
 * out); on a 127.x loopback range neither would misbehave, but a range that means the same thing as
 * a real pod CIDR is less surprising.
 */

export interface Cidr {
  /** The network address as an unsigned 32-bit number. */
  base: number;
  prefix: number;
  /** Number of addresses in the range (2^(32-prefix)). */
  size: number;
}

export function ipToNumber(ip: string): number {
  const parts = ip.split(".");
  if (parts.length !== 4) throw new Error(`not an IPv4 address: ${ip}`);
  let n = 0;
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part) || Number(part) > 255) throw new Error(`not an IPv4 address: ${ip}`);
    n = n * 256 + Number(part);
  }
  return n;
}

export function numberToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

export function parseCidr(cidr: string): Cidr {
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(cidr);
  if (!m) throw new Error(`not an IPv4 CIDR: ${cidr}`);
  const prefix = Number(m[2]);
  // A /31 or /32 leaves no address between network and broadcast.
  if (prefix < 8 || prefix > 30) throw new Error(`pod CIDR ${cidr}: prefix must be between /8 and /30`);
  const size = 2 ** (32 - prefix);
  const base = ipToNumber(m[1]!) - (ipToNumber(m[1]!) % size);
  return { base, prefix, size };
}

export function cidrContains(cidr: Cidr, ip: string): boolean {
  let n: number;
  try {
    n = ipToNumber(ip);
  } catch {
    return false;
  }
  return n >= cidr.base && n < cidr.base + cidr.size;
}

export class IpPool {
  readonly cidr: Cidr;
  /** ip (as number) → owner key (the Pod uid). */
  private readonly byIp = new Map<number, string>();
  private readonly byOwner = new Map<string, number>();
  /** Offset in the range of the last address handed out. */
  private cursor = 0;

  constructor(cidr: string) {
    this.cidr = parseCidr(cidr);
  }

  /** Usable addresses: the range minus network and broadcast. */
  get capacity(): number {
    return this.cidr.size - 2;
  }

  get used(): number {
    return this.byIp.size;
  }

  /** The address held by `owner`, if any. */
  get(owner: string): string | undefined {
    const n = this.byOwner.get(owner);
    return n === undefined ? undefined : numberToIp(n);
  }

  /**
   * `owner`'s address: the one it holds, else the next free one after the cursor. Throws when the
   * range is exhausted.
   */
  allocate(owner: string): string {
    const held = this.get(owner);
    if (held !== undefined) return held;
    const usable = this.capacity;
    for (let i = 1; i <= usable; i++) {
      // Offsets 1 … size-2: skip the network (0) and broadcast (size-1) addresses.
      const offset = ((this.cursor + i - 1) % usable) + 1;
      const n = this.cidr.base + offset;
      if (!this.byIp.has(n)) {
        this.cursor = offset;
        this.byIp.set(n, owner);
        this.byOwner.set(owner, n);
        return numberToIp(n);
      }
    }
    throw new Error(`pod CIDR ${numberToIp(this.cidr.base)}/${this.cidr.prefix} is exhausted`);
  }

  /**
   * Records that `owner` already holds `ip` (a Pod whose status carries it from a previous agent
   * run: a Pod's IP never changes). False when the address is outside the range, is the network or
   * broadcast address, or belongs to another owner.
   */
  claim(owner: string, ip: string): boolean {
    if (!cidrContains(this.cidr, ip)) return false;
    const n = ipToNumber(ip);
    const offset = n - this.cidr.base;
    if (offset === 0 || offset === this.cidr.size - 1) return false;
    const holder = this.byIp.get(n);
    if (holder !== undefined) return holder === owner;
    const previous = this.byOwner.get(owner);
    if (previous !== undefined) this.byIp.delete(previous);
    this.byIp.set(n, owner);
    this.byOwner.set(owner, n);
    return true;
  }

  release(owner: string): void {
    const n = this.byOwner.get(owner);
    if (n === undefined) return;
    this.byOwner.delete(owner);
    this.byIp.delete(n);
  }
}
