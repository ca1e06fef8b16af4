// @ts-check
/**
 * The connection to the BlueCam server: join, frames in and out, and the reconnection state
 * machine (back-off with jitter, resume of the session). All connection state lives here.
 * The transport is a WebSocket, or the HTTP transport (http.js) when the browser has no
 * WebSocket, one cannot be opened, or the app asks for it (`signalMethod: "http"`).
 */

import { joinError, ConnectionError } from "./errors.js";
import { HttpSocket } from "./http.js";
import { CLOSE, CLOSE_CODES } from "./close-codes.js";
import { parseServerFrame } from "./frames.js";

/** What each close code means for the session (resume or not, next node or not): generated
 * from the vectors the server is checked against too (tests/vectors/close-codes.json). */
const CLOSE_BY_CODE = new Map(CLOSE_CODES.map((c) => [c.code, c]));
/** The SDK's own code for a server that stopped answering (a frozen or partitioned node). */
const UNRESPONSIVE = CLOSE.unresponsive;
/** Silence after which the SDK pings the server (`{"op":"ping"}`, answered with a pong)... */
const HEARTBEAT_MS = 5000;
/** ...and after which it gives the connection up and reconnects (or moves to the next node):
 * well before the server's own 40–60 s liveness check, so a frozen node costs seconds. */
const SILENCE_MS = 12000;
/** A connection that has not joined within this long is given up too. */
const JOIN_TIMEOUT_MS = 10000;
const WATCHDOG_MS = 1000;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;
/** Share of the server's rate limit the SDK allows itself. */
const RATE_MARGIN = 0.9;
/** `readyState` of an open socket (WebSocket.OPEN, and HttpSocket's; not read from the
 * `WebSocket` global, which a browser may not have). */
const OPEN = 1;
/** A WebSocket not open by then (a proxy that holds it unanswered) gives way to HTTP. */
const WS_OPEN_TIMEOUT_MS = 2000;

/**
 * A transport's URL from a node's WebSocket URL: ws(s)://host/v1/ws → http(s)://host/v1/http.
 * @param {string} wsUrl
 */
function httpUrl(wsUrl) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  // (Under the same path prefix as the WebSocket's.)
  u.pathname = u.pathname.replace(/\/v1\/ws$/, "/v1/http");
  return u.toString().replace(/\/$/, "");
}

/**
 * A token's claims (the JWT's middle part; no secret is needed to read them), or null when
 * they cannot be read (the server decides about the token anyway).
 * @param {string} token
 * @returns {{exp?: number, room?: string, permissions?: {sendData?: boolean, publishMedia?: boolean, subscribeMedia?: boolean}} | null}
 */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** A token this close to its expiry is renewed before a resume (the network may be slow). */
const TOKEN_MARGIN_MS = 30000;

/**
 * Whether a token has expired, or will within TOKEN_MARGIN_MS (also when its expiry cannot be
 * read: a fresh one is asked for then, to be safe).
 * @param {string} token
 * @param {number} [now]
 */
export function tokenExpiring(token, now = Date.now()) {
  const exp = tokenClaims(token)?.exp;
  return typeof exp !== "number" || exp * 1000 - TOKEN_MARGIN_MS <= now;
}

/**
 * What a close of the connection means: `final`, the session is over (the server said so);
 * `nextNode`, the next attempt goes to the next node (this one is going away or unresponsive).
 * An unknown code (1006, an abrupt loss) is resumable on the same node.
 * @param {number} code
 * @param {{joined: boolean, canRefreshToken: boolean}} state `joined`: this connection had
 *   joined; `canRefreshToken`: a fresh token can be had (getToken)
 * @returns {{final: boolean, nextNode: boolean}}
 */
export function closeDecision(code, { joined, canRefreshToken }) {
  const info = CLOSE_BY_CODE.get(code);
  // A token refused on a resume may just have expired: with a way to get a fresh one, the
  // next attempt uses it.
  const refreshable = code === CLOSE.unauthorized && canRefreshToken && !joined;
  return { final: !!info && !info.resume && !refreshable, nextNode: !!info?.nextNode };
}

/**
 * @typedef {import("./frames.js").ServerFrame} ServerFrame
 * @typedef {import("./frames.js").ClientFrame} ClientFrame
 * @typedef {import("./frames.js").JoinedFrame} JoinedFrame
 * @typedef {"websocket" | "http"} SignalMethod
 * @typedef {object} SignalingHandlers
 * @property {(frame: ServerFrame) => void} onFrame every frame after `joined`
 * @property {(joined: JoinedFrame) => void} onResumed a resume succeeded (same peer id)
 * @property {(connected: boolean) => void} onConnectionChange
 * @property {() => void} onWritable the rate limit has room again after a refused send
 * @property {(error: Error, closeCode: number) => void} onFatal the session is over
 */

export class Signaling {
  /**
   * @param {string[]} urls ws(s)://host/v1/ws of each node (one on a single server)
   * @param {string} token
   * @param {SignalingHandlers} handlers
   * @param {(() => Promise<string>) | undefined} getToken a fresh token for resumes (the first
   *   one may have expired by the time the network drops)
   * @param {SignalMethod | undefined} method only this transport; by default a WebSocket, and
   *   HTTP when the browser has none or one cannot be opened
   */
  constructor(urls, token, handlers, getToken, method) {
    this.urls = urls;
    /** The node in use: the first one given, then the next whenever one fails or drains. */
    this.urlIndex = 0;
    /** Nodes tried in a row without getting joined (the first join tries each once). */
    this.misses = 0;
    this.token = token;
    this.handlers = handlers;
    this.getToken = getToken;
    /** The server refused the token on a resume: the next attempt needs a fresh one. */
    this.tokenRefused = false;
    /** @type {ClientFrame[]} frames to send once the socket is back (bounded) */
    this.queued = [];
    /** What each queued sealed signal holds (sendOrQueue). @type {WeakMap<ClientFrame, {gen?: unknown, media?: unknown}>} */
    this.about = new WeakMap();
    // The server's per-connection frame rate limit, from `joined.limits`, kept with a margin so
    // that frames are held and batched here instead of being refused there.
    this.ratePerMs = 0.2 * RATE_MARGIN;
    this.burst = 400 * RATE_MARGIN;
    this.tokens = this.burst;
    this.refilledAt = Date.now();
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.writableTimer = undefined;
    /** @type {WebSocket | HttpSocket | null} */
    this.ws = null;
    this.method = method;
    /** A WebSocket could not be opened and HTTP could: this room stays on HTTP. */
    this.wsBlocked = false;
    /** @type {SignalMethod | null} the transport of the last connection that joined */
    this.transport = null;
    /** @type {{session: string, secret: string} | null} */
    this.resume = null;
    this.connected = false;
    this.closedForGood = false;
    this.attempt = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.retryTimer = undefined;
    /** No reconnection before this time (tests simulate a network cut with it). */
    this.blockedUntil = 0;
  }

  /**
   * Opens the socket and joins; resolves with the `joined` frame, rejects with a typed error.
   * @returns {Promise<JoinedFrame>}
   */
  join() {
    return new Promise((resolve, reject) => this.open(resolve, reject));
  }

  /** The node in use. */
  get url() {
    return this.urls[this.urlIndex % this.urls.length];
  }

  /** Moves to the next node (a no-op with one). */
  nextUrl() {
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
  }

  /** Whether the next connection goes over HTTP. */
  httpFirst() {
    if (this.method) return this.method === "http";
    return this.wsBlocked || typeof globalThis.WebSocket !== "function";
  }

  /**
   * @param {(joined: JoinedFrame) => void} onJoined
   * @param {(error: Error) => void} onFailed
   * @param {boolean} [viaHttp] this attempt's transport
   * @param {boolean} [fellBack] a WebSocket failed to open just before
   */
  open(onJoined, onFailed, viaHttp = this.httpFirst(), fellBack = false) {
    if (!viaHttp && typeof globalThis.WebSocket !== "function") {
      onFailed(new ConnectionError("this browser has no WebSocket (signalMethod: \"websocket\")", "unsupported"));
      return;
    }
    /** @type {WebSocket | HttpSocket} */
    const ws = viaHttp ? new HttpSocket(httpUrl(this.url)) : new WebSocket(this.url);
    this.ws = ws;
    let opened = false;
    let joined = false;
    let ended = false;
    const openedAt = Date.now();
    /** When anything last came from the server. */
    let heardAt = openedAt;
    /** @type {Error | null} */
    let failure = null;
    // Without a method set, a WebSocket that cannot be opened (refused, or unanswered for
    // WS_OPEN_TIMEOUT_MS: a proxy that blocks it) gives way to HTTP at once.
    const fallBack = !viaHttp && !this.method;
    const openTimer = fallBack
      ? setTimeout(() => {
        if (opened || ended) return;
        ws.onclose = null;
        ws.onopen = null;
        ws.onmessage = null;
        try {
          ws.close();
        } catch {
          // (a socket still connecting may refuse to close in some browsers)
        }
        finish(4997, "WebSocket not opened in time");
      }, WS_OPEN_TIMEOUT_MS)
      : undefined;
    ws.onopen = () => {
      opened = true;
      clearTimeout(openTimer);
      /** @type {import("./frames.js").JoinFrame} */
      const join = { op: "join", token: this.token };
      if (this.resume) join.resume = this.resume;
      ws.send(JSON.stringify(join));
    };
    ws.onmessage = (/** @type {{data: unknown}} */ ev) => {
      heardAt = Date.now();
      // (The HTTP transport hands over frames already parsed.) A frame this SDK cannot read
      // is dropped: a newer server's op, or a broken one.
      const frame = parseServerFrame(ev.data);
      if (!frame) return;
      if (!joined) {
        if (frame.op === "joined") {
          joined = true;
          if (fellBack) this.wsBlocked = true;
          this.transport = viaHttp ? "http" : "websocket";
          this.attempt = 0;
          this.misses = 0;
          this.resume = { session: frame.session.id, secret: frame.session.secret };
          const { rateFramesPerSec = 0, rateBurstFrames = 0 } = frame.limits ?? {};
          if (rateFramesPerSec > 0) this.ratePerMs = (rateFramesPerSec / 1000) * RATE_MARGIN;
          if (rateBurstFrames > 0) this.burst = rateBurstFrames * RATE_MARGIN;
          this.tokens = Math.min(this.tokens, this.burst);
          this.setConnected(true);
          onJoined(frame);
        } else if (frame.op === "error") {
          failure = joinError(frame.code, frame.message);
        }
        return;
      }
      if (frame.op === "pong") return; // the answer to the watchdog's ping
      this.handlers.onFrame(frame);
    };
    /**
     * The connection is over (closed, or given up by the watchdog): once per connection.
     * @param {number} code
     * @param {string} reason
     */
    const finish = (code, reason) => {
      if (ended) return;
      ended = true;
      clearInterval(watchdog);
      clearTimeout(openTimer);
      if (this.ws === ws) this.ws = null;
      this.setConnected(false);
      if (this.closedForGood) return;
      // No WebSocket to this node (not opened, or opened by a proxy that then passes nothing:
      // no answer to the join at all): the same attempt goes on over HTTP.
      if (fallBack && !joined && !failure && (!opened || code === UNRESPONSIVE)) {
        this.open(onJoined, onFailed, true, true);
        return;
      }
      // A node that could not be reached, refused for want of capacity, is draining (1001),
      // restarting (1012) or stopped answering (4998): the next attempt goes to the next node.
      const moveOn = !joined && (!failure || failure.constructor === ConnectionError);
      const decision = closeDecision(code, { joined, canRefreshToken: !!this.getToken });
      if (moveOn || decision.nextNode) this.nextUrl();
      if (!joined && !this.resume) {
        // The first join: try each node once, then report; never retry behind the caller's back.
        if (moveOn && ++this.misses < this.urls.length) {
          this.open(onJoined, onFailed);
          return;
        }
        onFailed(failure ?? new ConnectionError(`cannot connect to ${this.url} (${code})`, "unreachable"));
        return;
      }
      // Decide by the close code alone: an `unavailable` during a resume (a draining node, a
      // store outage) is worth retrying; a refused token is, when a fresh one can be had.
      if (decision.final) {
        const why = `connection closed (${code} ${reason || CLOSE_BY_CODE.get(code)?.reason || ""})`;
        this.fail(failure ?? new ConnectionError(why, CLOSE_BY_CODE.get(code)?.name ?? "connection_closed"), code);
        return;
      }
      if (code === CLOSE.unauthorized) this.tokenRefused = true;
      this.scheduleReconnect();
    };
    ws.onclose = (/** @type {{code: number, reason: string}} */ ev) => finish(ev.code, ev.reason);
    // The watchdog: a server that stops answering (frozen, partitioned, a half-open TCP
    // connection) is given up after SILENCE_MS, and a join that never completes after
    // JOIN_TIMEOUT_MS, rather than when TCP or the browser notice, which can take minutes.
    const watchdog = setInterval(() => {
      const now = Date.now();
      const silentFor = now - heardAt;
      const stuck = joined ? silentFor >= SILENCE_MS : now - openedAt >= JOIN_TIMEOUT_MS;
      if (stuck) {
        ws.onclose = null;
        ws.onmessage = null;
        ws.onopen = null;
        try {
          ws.close(UNRESPONSIVE, "server unresponsive");
        } catch {
          // (closing a socket still connecting may throw in some browsers)
        }
        finish(UNRESPONSIVE, "server unresponsive");
      } else if (joined && silentFor >= HEARTBEAT_MS && ws.readyState === OPEN) {
        ws.send(JSON.stringify({ op: "ping" }));
      }
    }, WATCHDOG_MS);
  }

  /**
   * The session is over.
   * @param {Error} error
   * @param {number} code
   */
  fail(error, code) {
    this.closedForGood = true;
    this.stopTimers();
    this.queued = [];
    this.handlers.onFatal(error, code);
  }

  scheduleReconnect() {
    // No give-up on our side: only the server may end the session. Its resume window starts
    // again when it restarts (sessions are durable), so a server away for longer than the
    // window may still take us back; if it does not, it says so (4010) and the room ends then.
    // Meanwhile the peer-to-peer links and the room stay up.
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    const delay = Math.max(base / 2 + Math.random() * (base / 2), this.blockedUntil - Date.now());
    this.attempt++;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(async () => {
      if (this.closedForGood) return;
      // A fresh token only when this one has expired (or is about to) or was refused: after a
      // server restart every client resumes, and the app's backend should not hear from all.
      // (The attempts are spread by the back-off's jitter.)
      if (this.getToken && (this.tokenRefused || tokenExpiring(this.token))) {
        try {
          this.token = await this.getToken();
          this.tokenRefused = false;
        } catch {
          // Keep the old token; the server will say if it is no good.
        }
      }
      this.open(
        (joined) => this.handlers.onResumed(joined),
        () => {},
      );
    }, delay);
  }

  /**
   * @param {boolean} up
   */
  setConnected(up) {
    if (this.connected !== up) {
      this.connected = up;
      this.handlers.onConnectionChange(up);
    }
  }

  /**
   * Sends a frame if the socket is joined; false otherwise (the caller retries later).
   * @param {ClientFrame} frame
   */
  send(frame) {
    if (!this.connected || !this.ws || this.ws.readyState !== OPEN) return false;
    if (!this.takeToken()) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /**
   * Sends a frame whose share of the rate limit `takeToken` took already (a sealed one, made
   * meanwhile); a signal goes behind signals queued for the resume (sealed signals count up:
   * they must arrive in the order they were sealed). False when the socket is down.
   * @param {ClientFrame} frame
   */
  sendTaken(frame) {
    if (frame.op === "signal" && this.queued.length > 0) {
      this.queued.push(frame);
      return true;
    }
    if (!this.connected || !this.ws || this.ws.readyState !== OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Takes one frame's worth of the rate limit, or schedules `onWritable` for when it refills. */
  takeToken() {
    const now = Date.now();
    this.tokens = Math.min(this.burst, this.tokens + (now - this.refilledAt) * this.ratePerMs);
    this.refilledAt = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    if (this.writableTimer === undefined) {
      const wait = Math.ceil((1 - this.tokens) / this.ratePerMs);
      this.writableTimer = setTimeout(() => {
        this.writableTimer = undefined;
        this.flushQueued();
        this.handlers.onWritable();
      }, wait);
    }
    return false;
  }

  /**
   * Sends now, or once the socket is back (for frames that must not be lost, like signaling).
   * Nothing is dropped for want of room. What waits is bounded by what is still current: a
   * signal of a newer peer connection (`data.gen`) to a peer supersedes the waiting ones of an
   * older connection to it (the peer would ignore those: it starts over on the newer offer),
   * and a media state supersedes the one before it. A sealed signal (end-to-end encryption)
   * says what it carries in `about` (its `gen` and whether it is a media state), which the
   * server never sees.
   * @param {ClientFrame} frame
   * @param {{gen?: unknown, media?: unknown}} [about] what a sealed signal's data holds
   */
  sendOrQueue(frame, about) {
    if (this.queued.length === 0 && this.send(frame)) return;
    const data = about ?? (frame.op === "signal" ? frame.data : undefined);
    if (frame.op === "signal" && data && typeof data === "object") {
      this.queued = this.queued.filter((q) => {
        const was = this.about.get(q) ?? (q.op === "signal" ? q.data : undefined);
        return !(
          q.op === "signal" && q.to === frame.to && was && typeof was === "object" &&
          ((data.gen !== undefined && was.gen !== undefined && was.gen !== data.gen) ||
            (data.media !== undefined && was.media !== undefined))
        );
      });
    }
    if (about) this.about.set(frame, about);
    this.queued.push(frame);
  }

  /** Sends what waited for the socket; call after a resume. */
  flushQueued() {
    // In order: the first that cannot go (rate limit) keeps its place and every one after it.
    while (this.queued.length > 0 && this.send(this.queued[0])) this.queued.shift();
  }

  /** Stops the rate-limit timer (leave). */
  stopTimers() {
    clearTimeout(this.writableTimer);
    clearTimeout(this.retryTimer);
  }

  /** Drops the socket without leaving (tests use it to simulate a network cut). */
  drop() {
    this.ws?.close(4999, "dropped by client");
  }

  /**
   * Drops the socket and keeps it down for `ms` (a simulated network cut).
   * @param {number} ms
   */
  cut(ms) {
    this.blockedUntil = Date.now() + ms;
    this.drop();
  }

  /** Leaves the room for good. */
  leave() {
    this.closedForGood = true;
    this.stopTimers();
    if (this.ws && this.ws.readyState === OPEN) this.ws.send(JSON.stringify({ op: "leave" }));
    this.ws?.close(1000);
    this.ws = null;
    this.setConnected(false);
  }
}
