/**
 * Web Push from the page: subscribes this browser, on the service worker's registration, with the
 * VAPID key the server offers (/v1/connect), and registers the subscription as one of the user's
 * devices, so the user is notified while none of their devices is connected; the service worker
 * shows the notifications (service-worker.ts). No DOM here: `onChange` asks the toggle to draw again.
 */
import type { SwitchboardClient } from "../../sdk/src/index.js";

/** "unavailable": no toggle (no Web Push on the server, or no Push API here); "working": a change is under way. */
export type PushStatus = "unavailable" | "off" | "on" | "working";

const DEVICE_ID_KEY = "switchboard:push-device";
/** How long sign-out waits for the server to drop the device before it goes on regardless. */
const SIGN_OUT_WAIT_MS = 3_000;
/** How long to wait for the service worker main.ts registers before telling the user it is missing. */
const WORKER_WAIT_MS = 10_000;

/** Whether this browser can receive Web Push (all of it needs a secure context). */
export function pushSupported(): boolean {
  return (
    window.isSecureContext &&
    "serviceWorker" in navigator &&
    "PushManager" in window &&
    "Notification" in window
  );
}

/**
 * This browser's device id for registerDevice, made once and kept: the server replaces a device's
 * token under the same id, so a rotated subscription does not pile up as new devices.
 */
export function pushDeviceId(): string {
  let id = localStorage.getItem(DEVICE_ID_KEY);
  if (!id) {
    id = `web-${crypto.randomUUID()}`;
    localStorage.setItem(DEVICE_ID_KEY, id);
  }
  return id;
}

/** A base64url string (a VAPID public key) as bytes, the form every browser takes it in. */
export function base64UrlBytes(value: string): Uint8Array<ArrayBuffer> {
  const binary = atob(value.replace(/-/g, "+").replace(/_/g, "/"));
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function sameBytes(a: ArrayBuffer | null, b: Uint8Array): boolean {
  if (a === null || a.byteLength !== b.length) return false;
  const view = new Uint8Array(a);
  return b.every((byte, i) => view[i] === byte);
}

function withTimeout<T>(work: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

export class WebPush {
  status: PushStatus = "unavailable";
  /** Why the last change failed, in words for the user; "" once one succeeds. */
  error = "";
  onChange: () => void = () => {};
  private key: Uint8Array<ArrayBuffer> | undefined;

  /**
   * `enabledKey`: where this browser remembers that this user (on this server) turned notifications
   * on. A subscription belongs to the browser, not to a user: without the mark, the next user to sign
   * in here would be registered with a subscription someone else turned on.
   */
  constructor(
    private readonly client: SwitchboardClient,
    readonly enabledKey: string,
  ) {}

  private get wanted(): boolean {
    return localStorage.getItem(this.enabledKey) === "on";
  }

  private set wanted(on: boolean) {
    if (on) localStorage.setItem(this.enabledKey, "on");
    else localStorage.removeItem(this.enabledKey);
  }

  /**
   * Offers the toggle when the server has Web Push (`publicKey`) and this browser the Push API. If
   * this user turned notifications on before, registers the subscription again: the browser may
   * have rotated it, or the server dropped it (an endpoint that failed) meanwhile.
   */
  async start(publicKey: string | undefined): Promise<void> {
    if (publicKey === undefined || !pushSupported()) return;
    try {
      this.key = base64UrlBytes(publicKey);
    } catch {
      return; // not base64url: a server that offers no usable key offers no notifications
    }
    this.status = "off";
    if (!this.wanted) return this.onChange();
    if (Notification.permission !== "granted") {
      // Taken back in the browser's settings since: nothing can be shown here, so the server is told
      // to stop sending.
      return this.change("off", "Could not turn notifications off", async () => {
        await this.client.unregisterDevice(pushDeviceId());
        this.wanted = false;
        this.status = "off";
      });
    }
    await this.change("off", "Could not renew notifications", () => this.subscribeAndRegister());
  }

  /** Another tab of this browser turned notifications on or off: the subscription is the same one. */
  changedElsewhere(): void {
    if (this.status !== "on" && this.status !== "off") return;
    this.status = this.wanted ? "on" : "off";
    this.error = "";
    this.onChange();
  }

  toggle(): Promise<void> {
    return this.status === "on" ? this.disable() : this.enable();
  }

  /** Asks for permission (this must run in the click's task: browsers ignore requests without one). */
  enable(): Promise<void> {
    const permission = Notification.requestPermission();
    return this.change("off", "Could not turn notifications on", async () => {
      const answer = await permission;
      if (answer === "denied")
        throw new Error("the browser blocks them for this site; allow them in its site settings");
      if (answer !== "granted") throw new Error("the browser's permission was not given");
      await this.subscribeAndRegister();
    });
  }

  disable(): Promise<void> {
    return this.change("on", "Could not turn notifications off", async () => {
      // The server first: if it cannot be told, notifications stay on and the user can try again.
      await this.client.unregisterDevice(pushDeviceId());
      this.wanted = false;
      await (await (await this.pushManager()).getSubscription())?.unsubscribe();
      this.status = "off";
    });
  }

  /**
   * At sign-out: the user who leaves is notified here no more. Best effort within a few seconds,
   * since sign-out must not hang on a server that is down: the browser's subscription ends anyway,
   * and the server removes a device whose endpoint the push service reports gone.
   */
  async signOut(): Promise<void> {
    if (!this.wanted) return;
    this.wanted = false;
    const work: Promise<unknown>[] = [];
    if (this.client.state === "open") work.push(this.client.unregisterDevice(pushDeviceId()));
    if (pushSupported())
      work.push(this.pushManager().then(async (pm) => (await pm.getSubscription())?.unsubscribe()));
    await withTimeout(Promise.allSettled(work), SIGN_OUT_WAIT_MS, "sign-out: push not undone in time").catch(
      () => undefined,
    );
  }

  private async subscribeAndRegister(): Promise<void> {
    const key = this.key;
    if (!key) throw new Error("the server offers no Web Push");
    const pm = await this.pushManager();
    let subscription = await pm.getSubscription();
    if (subscription && !sameBytes(subscription.options.applicationServerKey, key)) {
      // Made with another key (the server's changed): the server could not send to it.
      await subscription.unsubscribe();
      subscription = null;
    }
    subscription ??= await pm.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    await this.client.registerDevice({
      deviceId: pushDeviceId(),
      provider: "webpush",
      token: JSON.stringify(subscription),
    });
    this.wanted = true;
    this.status = "on";
  }

  private async pushManager(): Promise<PushManager> {
    const registration = await withTimeout(
      navigator.serviceWorker.ready,
      WORKER_WAIT_MS,
      "the service worker is not running, so this page cannot receive notifications",
    );
    return registration.pushManager;
  }

  /** Runs one change with the toggle busy; a failure leaves the status `before` and says why. */
  private async change(before: PushStatus, what: string, action: () => Promise<void>): Promise<void> {
    this.status = "working";
    this.error = "";
    this.onChange();
    try {
      await action();
    } catch (err) {
      this.status = before;
      this.error = `${what}: ${err instanceof Error ? err.message : String(err)}`;
    }
    this.onChange();
  }
}
