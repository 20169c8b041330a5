/** Reading the page's form fields. */
import { byId } from "./dom.js";

/** A user id as the server accepts it (docs/protocol.md §2.1). */
export const USER_ID = /^[A-Za-z0-9._@:+-]{1,128}$/;

export function inputValue(id: string): string {
  return byId<HTMLInputElement | HTMLTextAreaElement>(id).value.trim();
}
