/**
 * A lean WebSocket client for the connect-rate and idle-memory measurements, where the generator opens
 * thousands of connections as fast as the server takes them.
 *
 * The `ws` client cost the generator 300–400 µs of CPU per connect on the 2-vCPU machine (HTTP
 * client, a random key and its SHA-1 check, event emitters per socket), more than the server's own
 * ~230 µs: with the generator on one core, the figure measured the generator. This client writes a
 * prepared upgrade request on a plain socket, checks the `101` and its `Sec-WebSocket-Accept` (one
 * fixed key, so the expected accept value is computed once), optionally sends one text frame (a
 * peer's connect command), and resolves at the first data frame the caller accepts (the welcome).
 * Afterwards it reads frames only to answer pings, as any conforming client does.
 */
import { createHash } from "node:crypto";
import { connect, type Socket } from "node:net";

const KEY = "c3dpdGNoYm9hcmRiZW5jaA=="; // 16 bytes ("switchboardbench"), base64: the key need not be random for a benchmark
const ACCEPT = createHash("sha1").update(`${KEY}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest("base64");

const OP_TEXT = 0x1;
const OP_BINARY = 0x2;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;
const OP_PONG = 0xa;
/** A frame larger than this from the server fails the connection (the welcome is ~1 KB). */
const FRAME_BYTES_MAX = 1 << 20;

export interface RawOpenOptions {
  url: string;
  /** Extra request headers (e.g. Authorization). */
  headers?: Record<string, string>;
  /** Sec-WebSocket-Protocol to ask for. */
  protocol?: string;
  /** A text frame to send once upgraded (Centrifugo's connect command). */
  firstFrame?: string;
  /**
   * Called with each data frame until it returns true (the connection is then open) or a string (it
   * failed, with this reason).
   */
  accept: (payload: Buffer, binary: boolean) => boolean | string;
  /** Once open: the text frame to answer a data frame with, if any (Centrifugo's `{}` ping). */
  answer?: (payload: Buffer) => string | undefined;
  localAddress?: string;
  timeoutMs?: number;
}

/** An open connection: it answers pings until terminated. */
export interface RawConnection {
  terminate(): void;
  close(): void;
}

/** A masked client frame with an all-zero mask (the XOR is then the identity). */
function clientFrame(opcode: number, payload: Buffer): Buffer {
  const n = payload.length;
  const header = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const out = Buffer.alloc(header + 4 + n);
  out[0] = 0x80 | opcode;
  if (n < 126) out[1] = 0x80 | n;
  else if (n < 65536) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(n, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeBigUInt64BE(BigInt(n), 2);
  }
  payload.copy(out, header + 4);
  return out;
}

export function openRaw(opts: RawOpenOptions): Promise<RawConnection> {
  const url = new URL(opts.url);
  const lines = [
    `GET ${url.pathname}${url.search} HTTP/1.1`,
    `Host: ${url.host}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    `Sec-WebSocket-Key: ${KEY}`,
    "Sec-WebSocket-Version: 13",
    ...(opts.protocol ? [`Sec-WebSocket-Protocol: ${opts.protocol}`] : []),
    ...Object.entries(opts.headers ?? {}).map(([k, v]) => `${k}: ${v}`),
  ];
  const request = `${lines.join("\r\n")}\r\n\r\n`;
  return new Promise((resolve, reject) => {
    const socket: Socket = connect({
      host: url.hostname,
      port: Number(url.port),
      ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
    });
    socket.setNoDelay(true);
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new Error("no welcome within timeout")), opts.timeoutMs ?? 30_000);
    const connection: RawConnection = {
      terminate: () => socket.destroy(),
      close: () => socket.end(),
    };
    let upgraded = false;
    let pending: Buffer = Buffer.alloc(0);
    const onFrame = (opcode: number, payload: Buffer) => {
      if (opcode === OP_PING) socket.write(clientFrame(OP_PONG, payload));
      else if (opcode === OP_CLOSE) {
        socket.destroy();
        fail(new Error(`closed ${payload.length >= 2 ? payload.readUInt16BE(0) : 1005}`));
      } else if (opcode !== OP_TEXT && opcode !== OP_BINARY) {
        // a pong or a continuation: nothing the measurements use
      } else if (settled) {
        const reply = opts.answer?.(payload);
        if (reply !== undefined) socket.write(clientFrame(OP_TEXT, Buffer.from(reply, "utf8")));
      } else {
        const verdict = opts.accept(payload, opcode === OP_BINARY);
        if (typeof verdict === "string") fail(new Error(verdict));
        else if (verdict) {
          settled = true;
          clearTimeout(timer);
          resolve(connection);
        }
      }
    };
    socket.on("data", (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      if (!upgraded) {
        const end = pending.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = pending.subarray(0, end).toString("latin1");
        if (!head.startsWith("HTTP/1.1 101")) return fail(new Error(head.split("\r\n", 1)[0]));
        if (!head.includes(ACCEPT)) return fail(new Error("wrong Sec-WebSocket-Accept"));
        upgraded = true;
        pending = pending.subarray(end + 4);
        if (opts.firstFrame !== undefined)
          socket.write(clientFrame(OP_TEXT, Buffer.from(opts.firstFrame, "utf8")));
      }
      // Server frames are unmasked: 2-10 bytes of header, then the payload.
      while (pending.length >= 2) {
        const opcode = pending[0]! & 0x0f;
        let length = pending[1]! & 0x7f;
        let offset = 2;
        if (length === 126) {
          if (pending.length < 4) return;
          length = pending.readUInt16BE(2);
          offset = 4;
        } else if (length === 127) {
          if (pending.length < 10) return;
          length = Number(pending.readBigUInt64BE(2));
          offset = 10;
        }
        if (length > FRAME_BYTES_MAX) return fail(new Error(`server frame of ${length} bytes`));
        if (pending.length < offset + length) return;
        onFrame(opcode, pending.subarray(offset, offset + length));
        pending = pending.subarray(offset + length);
      }
    });
    socket.once("error", fail);
    socket.once("close", () => fail(new Error("closed before the welcome")));
    socket.write(request);
  });
}
