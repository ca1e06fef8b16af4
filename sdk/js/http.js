// @ts-check
/**
 * The HTTP transport: the protocol's frames over plain HTTP requests, for browsers that cannot
 * open a WebSocket (none in the browser, or a proxy that blocks it). `HttpSocket` looks like a
 * WebSocket to signaling.js (onopen, onmessage, onclose, send, close, readyState), so joining,
 * resuming and the delivery layer above it are the same on both transports.
 *
 * Long-polling (docs/protocol.md, "The HTTP transport"): every request is a POST with a
 * text/plain body, which needs no CORS preflight and puts no secret in a URL.
 * - open: the first frame (the join); the answer names the session and carries the first frames;
 * - poll: `{"sid","ack"}`; the answer carries the frames after `ack`, numbered from `first`;
 * - send: `{"sid","seq","close"}` then one frame per line; frames already taken are skipped,
 *   so a request whose answer was lost is simply sent again.
 * One poll and one send are in flight at a time. Requests that keep failing for LOST_AFTER_MS
 * end the transport with 1006, as a dropped WebSocket does, and signaling resumes the session.
 */

/** A poll waits at most 25 s at the server; one taking longer than this is given up. */
const POLL_TIMEOUT_MS = 35000;
/** A send's answer comes at once (or after the server's back-pressure); beyond, retried. */
const SEND_TIMEOUT_MS = 15000;
/** Requests failing this long in a row: the transport is lost. */
const LOST_AFTER_MS = 8000;
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 2000;
/** Bytes of frames per send request before `joined` says the server's frame limit (at least one
 * frame, whatever its size); then twice that limit, the server's body limit less its margin. */
const SEND_BATCH_BYTES = 256 * 1024;
/** The closing request goes with `keepalive` (so it arrives while the page unloads) when its
 * body fits the browser's keepalive quota. */
const KEEPALIVE_MAX = 60000;

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

/** A request that failed in a way retrying cannot fix. */
class Final extends Error {
  /**
   * @param {number} code the close code the transport ends with
   * @param {string} reason
   */
  constructor(code, reason) {
    super(reason);
    this.code = code;
  }
}

/**
 * @param {number} ms
 * @returns {Promise<void>}
 */
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class HttpSocket {
  /** @param {string} url the transport's base, http(s)://host/v1/http */
  constructor(url) {
    this.url = url;
    this.readyState = CONNECTING;
    /** @type {((ev: unknown) => void) | null} */
    this.onopen = null;
    /** @type {((ev: {data: unknown}) => void) | null} */
    this.onmessage = null;
    /** @type {((ev: {code: number, reason: string, wasClean: boolean}) => void) | null} */
    this.onclose = null;
    /** @type {string | null} the session, once open */
    this.sid = null;
    /** The number of the last frame received. */
    this.ack = 0;
    /** @type {{n: number, text: string}[]} frames not yet taken by the server */
    this.outbox = [];
    this.nextSeq = 1;
    /** Bytes of frames per send request (see SEND_BATCH_BYTES). */
    this.batchBytes = SEND_BATCH_BYTES;
    /** The server ended the connection: its close comes with the next poll; nothing more to send. */
    this.serverEnded = false;
    this.sending = false;
    /** The client closed (the server is told by `sendClose`). */
    this.closing = false;
    this.ended = false;
    this.abort = new AbortController();
    setTimeout(() => {
      if (this.readyState !== CONNECTING) return;
      this.readyState = OPEN;
      this.onopen?.({ type: "open" });
    }, 0);
  }

  /**
   * Queues a frame (in order, exactly once, whatever the network does meanwhile).
   * @param {string} text one frame's JSON (no raw line breaks: JSON.stringify writes none)
   */
  send(text) {
    if (this.readyState !== OPEN) return;
    this.outbox.push({ n: this.nextSeq++, text });
    void this.pump();
  }

  /**
   * Closes: the server learns it after the frames sent before (a `leave` arrives first).
   * @param {number} [code]
   * @param {string} [reason]
   */
  close(code = 1000, reason = "") {
    if (this.readyState === CLOSED) return;
    this.closing = true;
    this.sendClose();
    this.end(code, reason, true);
  }

  /**
   * Tells the server the client closed, after every frame not yet taken (a `leave` first):
   * one request of its own, beside any under way (frames are numbered: the server takes each
   * once), with `keepalive` so that it still goes out when the page is unloading.
   */
  sendClose() {
    if (this.sid === null) return;
    const seq = this.outbox[0]?.n ?? this.nextSeq;
    const body = [JSON.stringify({ sid: this.sid, seq, close: true }), ...this.outbox.map((f) => f.text)].join("\n");
    fetch(`${this.url}/send`, { method: "POST", body, keepalive: body.length <= KEEPALIVE_MAX, cache: "no-store" }).catch(() => {
      // The server ends the session when it hears nothing more anyway (4011, resumable).
    });
  }

  /**
   * The transport is over: once.
   * @param {number} code
   * @param {string} reason
   * @param {boolean} clean
   */
  end(code, reason, clean) {
    if (this.ended) return;
    this.ended = true;
    this.readyState = CLOSED;
    // The poll stops; a send still under way finishes (it may carry the close).
    this.abort.abort();
    setTimeout(() => this.onclose?.({ code, reason, wasClean: clean }), 0);
  }

  /**
   * One POST; its JSON answer. Throws `Final` for answers retrying cannot change.
   * @param {string} path
   * @param {string} body
   * @param {number} timeoutMs
   * @param {AbortSignal | null} signal
   */
  async post(path, body, timeoutMs, signal) {
    const timeout = AbortSignal.timeout(timeoutMs);
    const res = await fetch(`${this.url}/${path}`, {
      method: "POST",
      body,
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      cache: "no-store",
    });
    if (res.ok) return res.json();
    // The session is not known (its node restarted, or it ended): resume on a new one.
    if (res.status === 404) throw new Final(1006, "transport session gone");
    if (res.status === 413) throw new Final(1009, "frame too large");
    if (res.status === 403) throw new Final(1006, "refused");
    throw new Error(`HTTP ${res.status}`);
  }

  /**
   * `post`, retried with back-off until it succeeds, fails for good, or has failed for
   * LOST_AFTER_MS in a row.
   * @param {string} path
   * @param {() => string} body built again for each try
   * @param {number} timeoutMs
   * @param {AbortSignal | null} signal
   */
  async postRetrying(path, body, timeoutMs, signal) {
    let failingSince = 0;
    let delay = RETRY_MIN_MS;
    for (;;) {
      try {
        return await this.post(path, body(), timeoutMs, signal);
      } catch (e) {
        if (e instanceof Final || signal?.aborted) throw e;
        failingSince ||= Date.now();
        if (Date.now() - failingSince >= LOST_AFTER_MS) throw new Final(1006, "server unreachable over HTTP");
        await sleep(delay);
        delay = Math.min(delay * 2, RETRY_MAX_MS);
      }
    }
  }

  /** Sends what is queued, one request at a time. */
  async pump() {
    if (this.sending) return;
    this.sending = true;
    try {
      while (!this.closing && !this.serverEnded) {
        if (this.sid === null) {
          // Open with the first frame (the join). Not retried: a lost answer would leave a
          // session behind; signaling tries again with a new transport.
          const first = this.outbox[0];
          if (!first || this.ended) return;
          const v = await this.post("open", first.text, SEND_TIMEOUT_MS + 15000, this.abort.signal);
          // A join that failed gets its error and close, and no session.
          this.sid = typeof v.sid === "string" ? v.sid : null;
          this.outbox.shift();
          this.receive(v);
          if (this.sid === null && !this.ended) this.end(1006, "no transport session", false);
          if (this.ended) return;
          void this.pollLoop();
          continue;
        }
        if (this.outbox.length === 0) return;
        // UTF-8 bytes, at most three per UTF-16 unit: a batch never exceeds the body limit.
        let bytes = 0;
        let count = 0;
        for (const f of this.outbox) {
          if (count > 0 && bytes + f.text.length * 3 > this.batchBytes) break;
          bytes += f.text.length * 3;
          count++;
        }
        const batch = this.outbox.slice(0, count);
        const sid = this.sid;
        const body = () => [JSON.stringify({ sid, seq: batch[0].n }), ...batch.map((f) => f.text)].join("\n");
        const v = await this.postRetrying("send", body, SEND_TIMEOUT_MS, this.abort.signal);
        const acked = Number(v.ack);
        while (this.outbox.length > 0 && this.outbox[0].n <= acked) this.outbox.shift();
        if (v.closed) this.serverEnded = true;
      }
    } catch (e) {
      if (!this.closing) this.end(e instanceof Final ? e.code : 1006, e instanceof Error ? e.message : "send failed", false);
    } finally {
      this.sending = false;
    }
  }

  /** Polls until the transport ends. */
  async pollLoop() {
    while (!this.ended) {
      try {
        const v = await this.postRetrying("poll", () => JSON.stringify({ sid: this.sid, ack: this.ack }), POLL_TIMEOUT_MS, this.abort.signal);
        this.receive(v);
      } catch (e) {
        if (!this.ended) this.end(e instanceof Final ? e.code : 1006, e instanceof Error ? e.message : "poll failed", false);
        return;
      }
    }
  }

  /**
   * Delivers the frames of an answer that are new, in order, then its close.
   * @param {{first: number, frames: unknown[], close?: {code: number, reason: string}}} v
   */
  receive(v) {
    const first = Number(v.first);
    for (let i = 0; i < v.frames.length && !this.ended; i++) {
      if (first + i !== this.ack + 1) continue;
      this.ack = first + i;
      const frame = /** @type {{op?: string, limits?: {maxFrameBytes?: number}}} */ (v.frames[i]);
      const max = frame?.op === "joined" ? Number(frame.limits?.maxFrameBytes) : 0;
      if (max > 0) this.batchBytes = 2 * max;
      // Already parsed: signaling takes the frame as it is.
      this.onmessage?.({ data: frame });
    }
    if (v.close && !this.ended) this.end(v.close.code, v.close.reason, true);
  }
}
