// @ts-check
/**
 * A room's events: `room.on(event, handler)` / `room.off(event, handler)`, and the option
 * callbacks (`onMessage`, …), which are handlers of the same events registered at the join.
 *
 * Nothing is handed to a handler before `joinRoom` has resolved: what happens during the join
 * (the peers already there, the connection coming up) waits here and is delivered right after,
 * in order, once the code awaiting `joinRoom` has run (a task later, so that `room` is set by
 * then). A handler that throws is reported on the console and does not stop the others.
 */

/**
 * @typedef {import("./frames.js").Peer} Peer
 * @typedef {"p2p" | "relay"} Path
 * @typedef {"connecting" | "connected" | "reconnecting" | "disconnected"} ConnectionState
 * @typedef {{expected: number, held: number, partial: number}} Gap
 * @typedef {"left" | "timeout" | "kicked" | "replaced" | (string & {})} LeaveReason why a peer
 *   left: it left, its connection was lost for longer than the resume window, the app's
 *   backend removed it, or a newer session of its identity took its seat
 */

/**
 * Each event and the arguments its handlers get.
 * @typedef {object} RoomEvents
 * @property {[type: string, data: any, from: Peer, meta: {path: Path}]} message an app message
 *   (binary data arrives as a `Uint8Array`)
 * @property {[peer: Peer]} peerJoined
 * @property {[peer: Peer, reason: LeaveReason]} peerLeft
 * @property {[peer: Peer, stream: MediaStream]} stream a peer's media arrived
 * @property {[peer: Peer, state: {audio: boolean, video: boolean}]} mediaChange a peer turned
 *   its camera or microphone on or off
 * @property {[peer: Peer, path: Path]} pathChange messages to this peer now take this path
 * @property {[state: ConnectionState]} connectionChange the link to the server
 * @property {[error: import("./errors.js").BlueCamError | Error]} error
 * @property {[peer: Peer, gap: Gap]} gap a peer left while some of its messages to us were
 *   incomplete: message `expected` never arrived, `held` later ones and `partial` chunked ones
 *   are dropped with it
 */

/** @typedef {keyof RoomEvents} RoomEventName */

/** The option callback of each event. */
export const OPTION_OF = /** @type {const} */ ({
  message: "onMessage",
  peerJoined: "onPeerJoined",
  peerLeft: "onPeerLeft",
  stream: "onStream",
  mediaChange: "onMediaChange",
  pathChange: "onPathChange",
  connectionChange: "onConnectionChange",
  error: "onError",
  gap: "onGap",
});

export class Emitter {
  /** @type {Map<string, Set<(...args: any[]) => void>>} */
  #handlers = new Map();
  /** @type {[string, unknown[]][] | null} events held until the join has resolved */
  #held = [];

  /**
   * @template {RoomEventName} K
   * @param {K} event
   * @param {(...args: RoomEvents[K]) => void} handler
   * @returns {() => void} removes the handler
   */
  on(event, handler) {
    if (!(event in OPTION_OF)) throw new TypeError(`room.on: no event ${JSON.stringify(event)}`);
    if (typeof handler !== "function") throw new TypeError("room.on: the handler must be a function");
    let set = this.#handlers.get(event);
    if (!set) {
      set = new Set();
      this.#handlers.set(event, set);
    }
    // (Each registration is its own: the same function twice runs twice, and `off` removes
    // one.) A wrapper makes them distinct.
    const entry = (/** @type {any[]} */ ...args) => /** @type {any} */ (handler)(...args);
    entry.original = handler;
    set.add(entry);
    return () => {
      set.delete(entry);
    };
  }

  /**
   * Removes a handler given to `on` (the earliest registration of it, if it was given twice).
   * @template {RoomEventName} K
   * @param {K} event
   * @param {(...args: RoomEvents[K]) => void} handler
   */
  off(event, handler) {
    const set = this.#handlers.get(event);
    if (!set) return;
    for (const entry of set) {
      if (/** @type {any} */ (entry).original === handler) {
        set.delete(entry);
        return;
      }
    }
  }

  /** @param {RoomEventName} event */
  has(event) {
    return (this.#handlers.get(event)?.size ?? 0) > 0;
  }

  /**
   * Hands an event to its handlers, now or, during the join, once it has resolved.
   * @template {RoomEventName} K
   * @param {K} event
   * @param {RoomEvents[K]} args
   */
  emit(event, ...args) {
    if (this.#held) {
      this.#held.push([event, args]);
      return;
    }
    this.#dispatch(event, args);
  }

  /**
   * The join resolved: what it held is delivered a task from now (after the code that awaits
   * `joinRoom`), then events go out as they happen.
   */
  release() {
    setTimeout(() => this.flush(), 0);
  }

  /** Delivers what was held, now, and every event from now on as it happens. */
  flush() {
    const held = this.#held ?? [];
    this.#held = null;
    for (const [event, args] of held) this.#dispatch(event, args);
  }

  /**
   * @param {string} event
   * @param {unknown[]} args
   */
  #dispatch(event, args) {
    const set = this.#handlers.get(event);
    if (!set || set.size === 0) {
      if (event === "error") console.warn("bluecam:", args[0]);
      return;
    }
    for (const entry of [...set]) {
      // (A handler removed by an earlier one of the same event does not run.)
      if (!set.has(entry)) continue;
      try {
        entry(...args);
      } catch (err) {
        console.error(`bluecam: a "${event}" handler threw`, err);
      }
    }
  }
}
