/**
 * The name of the data in an embedded data dir (`Backends.dataSet`, `welcome.data_set`): made with the
 * file, and made anew in every copy `backup` writes, so that a server started on a restored copy
 * names another data set than the one its clients synced with (its seqs and inbox positions past the
 * copy's are handed out again).
 */
import { randomBytes } from "node:crypto";

/** Its key in the `meta` database. */
export const DATA_SET_KEY = "data-set";

/** A fresh name: 16 random bytes, base64url. */
export function newDataSetName(): string {
  return randomBytes(16).toString("base64url");
}
