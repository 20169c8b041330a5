/**
 * DeviceStore over `devices_by_user` (partition user_id; clustering device_id) and
 * `device_token_owners` (partition: the token's deviceTokenKey; which registration holds it).
 *
 * A device's row is replaced as a whole by its latest registration (last write wins, which is the
 * intended meaning here: the newest token is the valid one). A device token belongs to one
 * registration: registering it removes the registration that held it before (another user's phone
 * handed on, or the same app reinstalled under a new device id), so notifications follow the person
 * signed in. The owner row and the device row are written in one logged batch; the reads before it
 * are not isolated from a concurrent registration of the same token, which is rare (a person, one
 * device) and leaves at worst the older registration in place until its next registration or prune.
 */

import { invariantViolated } from "../../lib/errors.js";
import { type DeviceRecord, type DeviceStore, deviceTokenKey, tokenNamesOneDevice } from "../types.js";
import { type Session, toNumber, toText } from "./session.js";

const PROVIDERS = new Set<string>(["webpush", "apns", "fcm", "webhook"]);

export class CassandraDeviceStore implements DeviceStore {
  private readonly q: ReturnType<typeof statements>;

  constructor(private readonly s: Session) {
    this.q = statements(s);
  }

  async put(device: DeviceRecord): Promise<void> {
    await this.forget(device.userId, device.deviceId);
    const write = {
      query: this.q.put,
      params: [
        device.userId,
        device.deviceId,
        device.provider,
        device.token,
        new Date(device.registeredAtMs),
      ],
    };
    if (!tokenNamesOneDevice(device.provider)) {
      await this.s.execute("devices_by_user: put", write.query, write.params, { idempotent: true });
      return;
    }
    const key = deviceTokenKey(device.provider, device.token);
    const owner = await this.ownerOf(key);
    if (owner && (owner.userId !== device.userId || owner.deviceId !== device.deviceId))
      await this.forget(owner.userId, owner.deviceId);
    await this.s.batch(
      "devices_by_user: put with its token's owner",
      [write, { query: this.q.setOwner, params: [key, device.userId, device.deviceId] }],
      { idempotent: true, logged: true },
    );
  }

  async remove(userId: string, deviceId: string): Promise<void> {
    await this.forget(userId, deviceId);
  }

  /**
   * A conditional delete (one Paxos round on the device's row, only when the token read matches): a
   * registration that replaced the token between the read and the delete is kept. The dead token's
   * owner row goes first, whatever the outcome: a registration racing this one writes its own after.
   */
  async removeIfToken(userId: string, deviceId: string, token: string): Promise<boolean> {
    const row = (
      await this.s.execute("devices_by_user: read", this.q.read, [userId, deviceId], { idempotent: true })
    ).first();
    if (!row) return false;
    const existing = this.fromRow(userId, row);
    if (existing.token !== token) return false;
    if (tokenNamesOneDevice(existing.provider)) await this.forgetOwner(existing);
    const removed = await this.s.execute(
      "devices_by_user: remove if token",
      this.q.removeIfToken,
      [userId, deviceId, token],
      { idempotent: false },
    );
    return removed.wasApplied();
  }

  /** Removes a registration, and its token's owner row when that names it. */
  private async forget(userId: string, deviceId: string): Promise<void> {
    const row = (
      await this.s.execute("devices_by_user: read", this.q.read, [userId, deviceId], { idempotent: true })
    ).first();
    if (!row) return;
    await this.s.execute("devices_by_user: remove", this.q.remove, [userId, deviceId], { idempotent: true });
    const existing = this.fromRow(userId, row);
    if (tokenNamesOneDevice(existing.provider)) await this.forgetOwner(existing);
  }

  /** Removes the owner row of the device's token when it names this registration. */
  private async forgetOwner(device: DeviceRecord): Promise<void> {
    const key = deviceTokenKey(device.provider, device.token);
    const owner = await this.ownerOf(key);
    if (owner?.userId === device.userId && owner.deviceId === device.deviceId)
      await this.s.execute("device_token_owners: remove", this.q.removeOwner, [key], { idempotent: true });
  }

  private async ownerOf(key: string): Promise<{ userId: string; deviceId: string } | undefined> {
    const row = (
      await this.s.execute("device_token_owners: read", this.q.owner, [key], { idempotent: true })
    ).first();
    if (!row) return undefined;
    return {
      userId: toText(row.get("user_id"), "device_token_owners.user_id"),
      deviceId: toText(row.get("device_id"), "device_token_owners.device_id"),
    };
  }

  async list(userId: string): Promise<DeviceRecord[]> {
    const rows = await this.s.all("devices_by_user: list", this.q.list, [userId]);
    return rows.map((row) => this.fromRow(userId, row));
  }

  private fromRow(userId: string, row: { get(name: string): unknown }): DeviceRecord {
    const provider = toText(row.get("provider"), "devices_by_user.provider");
    if (!PROVIDERS.has(provider)) throw invariantViolated(`device of ${userId} has provider ${provider}`);
    return {
      userId,
      deviceId: toText(row.get("device_id"), "devices_by_user.device_id"),
      provider: provider as DeviceRecord["provider"],
      token: toText(row.get("push_token"), "devices_by_user.push_token"),
      registeredAtMs: toNumber(row.get("registered_at"), "devices_by_user.registered_at"),
    };
  }

  async close(): Promise<void> {}
}

function statements(s: Session) {
  const t = s.table("devices_by_user");
  const owners = s.table("device_token_owners");
  const columns = "device_id, provider, push_token, registered_at";
  return {
    put: `INSERT INTO ${t} (user_id, device_id, provider, push_token, registered_at) VALUES (?, ?, ?, ?, ?)`,
    read: `SELECT ${columns} FROM ${t} WHERE user_id = ? AND device_id = ?`,
    remove: `DELETE FROM ${t} WHERE user_id = ? AND device_id = ?`,
    removeIfToken: `DELETE FROM ${t} WHERE user_id = ? AND device_id = ? IF push_token = ?`,
    list: `SELECT ${columns} FROM ${t} WHERE user_id = ?`,
    owner: `SELECT user_id, device_id FROM ${owners} WHERE token_key = ?`,
    setOwner: `INSERT INTO ${owners} (token_key, user_id, device_id) VALUES (?, ?, ?)`,
    removeOwner: `DELETE FROM ${owners} WHERE token_key = ?`,
  };
}
