// @ts-check
/**
 * The WebSocket to the BlueCam server: join, frames in and out, and the reconnection state
 * machine (back-off with jitter, resume of the session). All connection state lives here.
 */

import { joinError, ConnectionError } from "./errors.js";

/** Close codes after which resuming makes no sense (docs/protocol.md, close codes). */
const FINAL_CLOSES = new Set([1000, 4000, 4001, 4003, 4004, 4009, 4010, 4029, 4040, 4041]);
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;

/**
 * @typedef {{op: string, [key: string]: any}} Frame
 * @typedef {object} SignalingHandlers
 * @property {(frame: Frame) => void} onFrame every frame after `joined`
 * @property {(joined: Frame) => void} onResumed a resume succeeded (same peer id)
 * @property {(connected: boolean) => void} onConnectionChange
 * @property {(error: Error, closeCode: number) => void} onFatal the session is over
 */

export class Signaling {
  /**
   * @param {string} url ws(s)://host/v1/ws
   * @param {string} token
   * @param {SignalingHandlers} handlers
   */
  constructor(url, token, handlers) {
    this.url = url;
    this.token = token;
    this.handlers = handlers;
    /** @type {WebSocket | null} */
    this.ws = null;
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
   * @returns {Promise<Frame>}
   */
  join() {
    return new Promise((resolve, reject) => this.open(resolve, reject));
  }

  /**
   * @param {(joined: Frame) => void} onJoined
   * @param {(error: Error) => void} onFailed
   */
  open(onJoined, onFailed) {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    let joined = false;
    /** @type {Error | null} */
    let failure = null;
    ws.onopen = () => {
      /** @type {Frame} */
      const join = { op: "join", token: this.token };
      if (this.resume) join.resume = this.resume;
      ws.send(JSON.stringify(join));
    };
    ws.onmessage = (ev) => {
      /** @type {Frame} */
      let frame;
      try {
        frame = JSON.parse(String(ev.data));
      } catch {
        return;
      }
      if (!joined) {
        if (frame.op === "joined") {
          joined = true;
          this.attempt = 0;
          this.resume = { session: frame.session.id, secret: frame.session.secret };
          this.setConnected(true);
          onJoined(frame);
        } else if (frame.op === "error") {
          failure = joinError(frame.code, frame.message);
        }
        return;
      }
      this.handlers.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this.ws = null;
      this.setConnected(false);
      if (this.closedForGood) return;
      if (!joined) {
        if (failure || FINAL_CLOSES.has(ev.code)) {
          const error = failure ?? new ConnectionError(`connection closed (${ev.code})`);
          if (this.resume) {
            // A resume failed for good: the session is over.
            this.closedForGood = true;
            this.handlers.onFatal(error, ev.code);
          }
          onFailed(error);
          return;
        }
        if (!this.resume) {
          // The first connection never got through: report instead of retrying forever.
          onFailed(new ConnectionError(`cannot connect to ${this.url} (${ev.code})`));
          return;
        }
      } else if (FINAL_CLOSES.has(ev.code)) {
        this.closedForGood = true;
        this.handlers.onFatal(new ConnectionError(`connection closed (${ev.code} ${ev.reason})`), ev.code);
        return;
      }
      this.scheduleReconnect();
    };
  }

  scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    const delay = Math.max(base / 2 + Math.random() * (base / 2), this.blockedUntil - Date.now());
    this.attempt++;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      if (this.closedForGood) return;
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
   * @param {Frame} frame
   */
  send(frame) {
    if (!this.connected || !this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
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
    clearTimeout(this.retryTimer);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ op: "leave" }));
    this.ws?.close(1000);
    this.ws = null;
    this.setConnected(false);
  }
}
