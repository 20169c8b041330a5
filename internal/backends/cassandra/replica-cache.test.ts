import { EventEmitter } from "node:events";
import type { Client } from "cassandra-driver";
import { describe, expect, it } from "vitest";
import { ReplicaCache } from "./replica-cache.js";

/** A client whose token map places a key by its first byte, and counts what it was asked. */
function fakeClient() {
  const emitter = new EventEmitter();
  const asked: string[] = [];
  let ringKnown = true;
  const client = Object.assign(emitter, {
    getReplicas(keyspace: string, key: Buffer) {
      asked.push(`${keyspace}/${key.toString("hex")}`);
      if (!ringKnown) return null;
      return [{ address: `10.0.0.${key[0]! % 3}` }];
    },
  });
  return {
    client: client as unknown as Client,
    emitter,
    asked,
    setRingKnown: (known: boolean) => {
      ringKnown = known;
    },
  };
}

describe("ReplicaCache", () => {
  it("asks the driver once per partition and keyspace, and answers the same hosts after", () => {
    const f = fakeClient();
    const cache = new ReplicaCache({ maxKeys: 100, maxAgeMs: 60_000 });
    cache.attach(f.client);
    const a = Buffer.from([1, 2]);
    const first = cache.replicas("ks", a);
    expect(cache.replicas("ks", Buffer.from([1, 2]))).toBe(first);
    expect(first).toEqual([{ address: "10.0.0.1" }]);
    expect(cache.replicas("ks", Buffer.from([2]))).toEqual([{ address: "10.0.0.2" }]);
    cache.replicas("other", a);
    expect(f.asked).toEqual(["ks/0102", "ks/02", "other/0102"]);
  });

  it("remembers nothing while the driver cannot place keys (before it knows the ring)", () => {
    const f = fakeClient();
    const cache = new ReplicaCache({ maxKeys: 100, maxAgeMs: 60_000 });
    expect(cache.replicas("ks", Buffer.from([1]))).toBeNull(); // no client yet
    cache.attach(f.client);
    f.setRingKnown(false);
    expect(cache.replicas("ks", Buffer.from([1]))).toBeNull();
    f.setRingKnown(true);
    expect(cache.replicas("ks", Buffer.from([1]))).toEqual([{ address: "10.0.0.1" }]);
    expect(f.asked).toHaveLength(2);
  });

  it("starts over when a node joins or leaves, when it is full, and when it is old", () => {
    let now = 0;
    const f = fakeClient();
    const cache = new ReplicaCache({ maxKeys: 2, maxAgeMs: 1_000, now: () => now });
    cache.attach(f.client);
    const key = Buffer.from([7]);
    const askedFor = () => f.asked.length;

    cache.replicas("ks", key);
    f.emitter.emit("hostAdd", {});
    cache.replicas("ks", key);
    f.emitter.emit("hostRemove", {});
    cache.replicas("ks", key);
    expect(askedFor()).toBe(3);

    now = 999;
    cache.replicas("ks", key);
    expect(askedFor()).toBe(3);
    now = 2_000;
    cache.replicas("ks", key);
    expect(askedFor()).toBe(4);

    cache.replicas("ks", Buffer.from([8])); // two keys: full
    expect(cache.size).toBe(2);
    cache.replicas("ks", Buffer.from([9]));
    expect(cache.size).toBe(1);
    cache.replicas("ks", key);
    expect(askedFor()).toBe(7);
  });
});
