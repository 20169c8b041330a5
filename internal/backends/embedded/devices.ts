/**
 * The embedded device registry: push devices by (user, device id), and each token's owner.
 */
import type { Database, RootDatabase } from "lmdb";
import type { DeviceRecord, DeviceStore } from "../types.js";
import { deviceTokenKey, tokenNamesOneDevice } from "../types.js";
import { type Guard, KEY_END, type Key } from "./store.js";

/** Devices by (user, device id); device tokens' owners by deviceTokenKey, changed in the same transaction. */
export class EmbeddedDevices implements DeviceStore {
  constructor(
    private readonly root: RootDatabase,
    private readonly db: Database<DeviceRecord, Key>,
    private readonly owners: Database<[string, string], Key>,
    private readonly guard: Guard,
  ) {}
  async put(device: DeviceRecord) {
    await this.guard(() =>
      this.root.transaction(() => {
        this.forget([device.userId, device.deviceId]);
        if (tokenNamesOneDevice(device.provider)) {
          const key = deviceTokenKey(device.provider, device.token);
          const owner = this.owners.get(key);
          if (owner) this.forget(owner);
          this.owners.put(key, [device.userId, device.deviceId]);
        }
        this.db.put([device.userId, device.deviceId], device);
      }),
    );
  }
  async remove(userId: string, deviceId: string) {
    await this.guard(() => this.root.transaction(() => this.forget([userId, deviceId])));
  }
  async removeIfToken(userId: string, deviceId: string, token: string) {
    return this.guard(() =>
      this.root.transaction(() => {
        if (this.db.get([userId, deviceId])?.token !== token) return false;
        this.forget([userId, deviceId]);
        return true;
      }),
    );
  }
  /** Removes a registration and its token's owner entry (inside a transaction). */
  private forget(at: [string, string]): void {
    const existing = this.db.get(at);
    if (!existing) return;
    this.db.remove(at);
    if (!tokenNamesOneDevice(existing.provider)) return;
    const key = deviceTokenKey(existing.provider, existing.token);
    const owner = this.owners.get(key);
    if (owner && owner[0] === at[0] && owner[1] === at[1]) this.owners.remove(key);
  }
  async list(userId: string) {
    const out: DeviceRecord[] = [];
    for (const { value } of this.db.getRange({ start: [userId, ""], end: [userId, KEY_END] }))
      out.push(value);
    return out;
  }
  async close(): Promise<void> {}
}
