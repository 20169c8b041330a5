import { describe, expect, it } from "vitest";
import { cidrContains, IpPool, parseCidr } from "./ipam.js";

describe("IpPool", () => {
  it("hands out unique addresses inside the range, never network or broadcast", () => {
    const pool = new IpPool("127.245.0.0/16");
    const seen = new Set<string>();
    for (let i = 0; i < 300; i++) {
      const ip = pool.allocate(`pod-${i}`);
      expect(seen.has(ip)).toBe(false);
      expect(cidrContains(pool.cidr, ip)).toBe(true);
      expect(ip).not.toBe("127.245.0.0");
      seen.add(ip);
    }
    expect(pool.allocate("pod-0")).toBe("127.245.0.1"); // an owner keeps its address
    expect(pool.used).toBe(300);
  });

  it("does not reuse a released address at once (next-fit), and reuses it after wrapping", () => {
    const pool = new IpPool("10.0.0.0/30"); // usable: .1 and .2
    expect(pool.allocate("a")).toBe("10.0.0.1");
    expect(pool.allocate("b")).toBe("10.0.0.2");
    expect(() => pool.allocate("c")).toThrow(/exhausted/);
    pool.release("a");
    expect(pool.allocate("c")).toBe("10.0.0.1");
    pool.release("b");
    pool.release("c");
    const pool2 = new IpPool("10.0.0.0/29"); // .1 … .6
    expect(pool2.allocate("x")).toBe("10.0.0.1");
    pool2.release("x");
    expect(pool2.allocate("y")).toBe("10.0.0.2"); // not .1 again right away
  });

  it("claims the addresses of adopted Pods, refusing conflicts and foreign ranges", () => {
    const pool = new IpPool("127.245.0.0/16");
    expect(pool.claim("a", "127.245.3.4")).toBe(true);
    expect(pool.claim("a", "127.245.3.4")).toBe(true);
    expect(pool.claim("b", "127.245.3.4")).toBe(false);
    expect(pool.claim("b", "127.244.0.5")).toBe(false);
    expect(pool.claim("b", "127.245.0.0")).toBe(false);
    expect(pool.claim("b", "127.245.255.255")).toBe(false);
    expect(pool.get("a")).toBe("127.245.3.4");
    // Allocation skips the claimed address.
    const p = new IpPool("10.1.0.0/24");
    p.claim("old", "10.1.0.1");
    expect(p.allocate("new")).toBe("10.1.0.2");
  });

  it("parses CIDRs", () => {
    expect(parseCidr("127.245.7.9/16")).toMatchObject({ prefix: 16, size: 65536 });
    expect(() => parseCidr("127.245.0.0/32")).toThrow();
    expect(() => parseCidr("nope")).toThrow();
    expect(() => parseCidr("300.1.1.1/8")).toThrow();
  });
});
