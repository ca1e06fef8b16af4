// @ts-check
// A hostile proxy between the browsers and one BlueCam server, in the position of a curious or
// compromised operator (or anyone with the server's TLS key): plain HTTP passes through, and
// every WebSocket message, both ways, is decoded, recorded, and handed to the test, which may
// pass it on, change it, drop it, hold it back, repeat it or inject others.
import { createServer as createHttpServer } from "node:http";
import { createConnection } from "node:net";
import { randomBytes } from "node:crypto";
import { passHttp } from "./harness.js";

/**
 * One WebSocket connection through the tap.
 * @typedef {object} TapConn
 * @property {number} n its number, from 1
 * @property {string | null} peer the peer id the server gave it (its `joined` frame)
 * @property {string | null} identity its peer's identity (the same frame)
 * @property {(text: string) => void} toClient sends a text message to the browser
 * @property {(text: string) => void} toServer sends a text message to the server
 */

/**
 * What the test does with one text message: returns the texts to pass on in its place (the
 * message itself, `[text]`, by default).
 * @typedef {(dir: "up" | "down", text: string, conn: TapConn) => string[]} Tamper
 */

/**
 * Decodes the complete frames at the start of `buf`.
 * @param {Buffer} buf
 * @returns {{frames: {fin: boolean, opcode: number, payload: Buffer}[], rest: Buffer}}
 */
function decodeFrames(buf) {
  const frames = [];
  let at = 0;
  for (;;) {
    if (buf.length - at < 2) break;
    const b0 = buf[at];
    const b1 = buf[at + 1];
    let len = b1 & 0x7f;
    let off = at + 2;
    if (len === 126) {
      if (buf.length - off < 2) break;
      len = buf.readUInt16BE(off);
      off += 2;
    } else if (len === 127) {
      if (buf.length - off < 8) break;
      len = Number(buf.readBigUInt64BE(off));
      off += 8;
    }
    const masked = (b1 & 0x80) !== 0;
    const mask = masked ? buf.subarray(off, off + 4) : null;
    if (masked) off += 4;
    if (buf.length - off < len) break;
    const payload = Buffer.from(buf.subarray(off, off + len));
    if (mask) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
    frames.push({ fin: (b0 & 0x80) !== 0, opcode: b0 & 0x0f, payload });
    at = off + len;
  }
  return { frames, rest: buf.subarray(at) };
}

/**
 * One whole frame; masked (as a client's must be) when `mask`.
 * @param {number} opcode
 * @param {Buffer} payload
 * @param {boolean} mask
 */
function encodeFrame(opcode, payload, mask) {
  const len = payload.length;
  const head = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const out = Buffer.alloc(head + (mask ? 4 : 0) + len);
  out[0] = 0x80 | opcode;
  if (len < 126) out[1] = len;
  else if (len < 65536) {
    out[1] = 126;
    out.writeUInt16BE(len, 2);
  } else {
    out[1] = 127;
    out.writeBigUInt64BE(BigInt(len), 2);
  }
  if (!mask) {
    payload.copy(out, head);
    return out;
  }
  out[1] |= 0x80;
  const key = randomBytes(4);
  key.copy(out, head);
  for (let i = 0; i < len; i++) out[head + 4 + i] = payload[i] ^ key[i & 3];
  return out;
}

/**
 * Starts the tap in front of `upstream` (http://127.0.0.1:PORT).
 * @param {string} upstream
 */
export function startWsTap(upstream) {
  const up = new URL(upstream);
  /** @type {{dir: "up" | "down", conn: number, text: string}[]} */
  const seen = [];
  /** @type {Tamper} */
  let tamper = (_dir, text) => [text];
  /** @type {Set<import("node:net").Socket>} */
  const sockets = new Set();
  let conns = 0;
  const server = createHttpServer((req, res) => passHttp(req, res, up, req.url ?? "/"));
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.on("upgrade", (req, client, head) => {
    const srv = createConnection(Number(up.port), up.hostname);
    sockets.add(srv);
    srv.on("close", () => sockets.delete(srv));
    srv.on("error", () => client.destroy());
    client.on("error", () => srv.destroy());
    srv.on("close", () => client.destroy());
    client.on("close", () => srv.destroy());
    /** @type {TapConn} */
    const conn = {
      n: ++conns,
      peer: null,
      identity: null,
      toClient: (text) => client.write(encodeFrame(1, Buffer.from(text), false)),
      toServer: (text) => srv.write(encodeFrame(1, Buffer.from(text), true)),
    };
    // The handshake, without extensions (so the frames are not compressed).
    let request = `${req.method} ${req.url} HTTP/1.1\r\n`;
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      if (req.rawHeaders[i].toLowerCase() === "sec-websocket-extensions") continue;
      request += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    }
    srv.write(request + "\r\n");
    /**
     * Relays one direction frame by frame.
     * @param {import("node:net").Socket} from
     * @param {import("node:net").Socket} to
     * @param {"up" | "down"} dir
     * @param {Buffer} start bytes already read
     * @param {boolean} skipHead the server's handshake answer comes first (passed as it is)
     */
    const pump = (from, to, dir, start, skipHead) => {
      let buf = start;
      let inHead = skipHead;
      /** @type {Buffer[]} */
      let fragments = [];
      let fragOpcode = 1;
      const drain = () => {
        if (inHead) {
          const end = buf.indexOf("\r\n\r\n");
          if (end < 0) return;
          to.write(buf.subarray(0, end + 4));
          buf = buf.subarray(end + 4);
          inHead = false;
        }
        const { frames, rest } = decodeFrames(buf);
        buf = Buffer.from(rest);
        for (const f of frames) {
          if (f.opcode >= 8) {
            to.write(encodeFrame(f.opcode, f.payload, dir === "up"));
            continue;
          }
          if (f.opcode !== 0) fragOpcode = f.opcode;
          fragments.push(f.payload);
          if (!f.fin) continue;
          const whole = Buffer.concat(fragments);
          fragments = [];
          if (fragOpcode !== 1) {
            to.write(encodeFrame(fragOpcode, whole, dir === "up"));
            continue;
          }
          const text = whole.toString("utf8");
          seen.push({ dir, conn: conn.n, text });
          if (dir === "down" && conn.peer === null && text.startsWith('{"op":"joined"')) {
            try {
              const self = JSON.parse(text).self;
              conn.peer = self.id;
              conn.identity = self.identity;
            } catch {
              // Not a joined frame after all.
            }
          }
          for (const out of tamper(dir, text, conn)) to.write(encodeFrame(1, Buffer.from(out), dir === "up"));
        }
      };
      from.on("data", (d) => {
        buf = Buffer.concat([buf, d]);
        drain();
      });
      drain();
    };
    pump(client, srv, "up", Buffer.from(head), false);
    pump(srv, client, "down", Buffer.alloc(0), true);
  });
  return new Promise((resolve, reject) => {
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const addr = server.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      resolve({
        url: `http://127.0.0.1:${port}`,
        /** Every text message seen so far, both ways. */
        seen,
        /** @param {Tamper} fn */
        setTamper: (fn) => {
          tamper = fn;
        },
        close: () => new Promise((done) => {
          for (const s of sockets) s.destroy();
          server.close(() => done(undefined));
        }),
      });
    });
  });
}
