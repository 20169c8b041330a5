/**
 * The time an id worker issued ids up to (internal/id/high-water.ts), one row per worker id in
 * `id_high_water`: what keeps a restarted role-all process of the distributed backend from issuing an
 * id again after its clock stepped back, whether it restarts on the same machine or another. (The
 * split id role has no storage; its callers name the ids they received instead: ADR 0005.)
 */
import { optionalNumber, type Session } from "./session.js";

/** The shape internal/id's HighWaterStore expects (backends do not import services). */
export interface IdHighWaterStore {
  load(): number | undefined;
  store(untilMs: number): Promise<void>;
}

/** Reads worker `workerId`'s mark once; `load` answers it from then on, `store` writes a new one. */
export async function openIdHighWater(s: Session, workerId: number): Promise<IdHighWaterStore> {
  const t = s.table("id_high_water");
  const row = (
    await s.execute("id_high_water: read", `SELECT until_ms FROM ${t} WHERE worker_id = ?`, [workerId], {
      idempotent: true,
    })
  ).first();
  const loaded = optionalNumber(row?.get("until_ms"), "id_high_water.until_ms");
  return {
    load: () => loaded,
    // The mark is its own write timestamp: a retried or late write of an older mark never replaces a
    // newer one, so the stored mark only grows.
    store: async (untilMs) => {
      await s.execute(
        "id_high_water: store",
        `UPDATE ${t} USING TIMESTAMP ? SET until_ms = ? WHERE worker_id = ?`,
        [untilMs * 1000, untilMs, workerId],
        { idempotent: true },
      );
    },
  };
}
