/**
 * DeviceStore over `devices_by_user` (partition user_id; clustering device_id).
 *
 * A device's row is replaced as a whole by its latest registration (last write wins, which is the
 * intended meaning here: the newest token is the valid one). Puts and removes are idempotent.
 */
import type { DeviceRecord, DeviceStore } from "../types.js";
import { type Session, toNumber, toText } from "./session.js";

const PROVIDERS = new Set<string>(["webpush", "apns", "fcm", "webhook"]);

export class CassandraDeviceStore implements DeviceStore {
  private readonly q: ReturnType<typeof statements>;

  constructor(private readonly s: Session) {
    this.q = statements(s);
  }

  async put(device: DeviceRecord): Promise<void> {
    await this.s.execute(
      "devices_by_user: put",
      this.q.put,
      [device.userId, device.deviceId, device.provider, device.token, new Date(device.registeredAtMs)],
      { idempotent: true },
    );
  }

  async remove(userId: string, deviceId: string): Promise<void> {
    await this.s.execute("devices_by_user: remove", this.q.remove, [userId, deviceId], { idempotent: true });
  }

  async list(userId: string): Promise<DeviceRecord[]> {
    const rows = await this.s.all("devices_by_user: list", this.q.list, [userId]);
    return rows.map((row) => {
      const provider = toText(row.get("provider"), "devices_by_user.provider");
      if (!PROVIDERS.has(provider))
        throw new Error(`invariant violated: device of ${userId} has provider ${provider}`);
      return {
        userId,
        deviceId: toText(row.get("device_id"), "devices_by_user.device_id"),
        provider: provider as DeviceRecord["provider"],
        token: toText(row.get("push_token"), "devices_by_user.push_token"),
        registeredAtMs: toNumber(row.get("registered_at"), "devices_by_user.registered_at"),
      };
    });
  }

  async close(): Promise<void> {}
}

function statements(s: Session) {
  const t = s.table("devices_by_user");
  return {
    put: `INSERT INTO ${t} (user_id, device_id, provider, push_token, registered_at) VALUES (?, ?, ?, ?, ?)`,
    remove: `DELETE FROM ${t} WHERE user_id = ? AND device_id = ?`,
    list: `SELECT device_id, provider, push_token, registered_at FROM ${t} WHERE user_id = ?`,
  };
}
