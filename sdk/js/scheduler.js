// @ts-check
/**
 * The send loop of a room: each peer's outbox (sequence numbers, back-pressure) and inbox
 * (order, duplicates), and when and by which path their envelopes go: the data channel when
 * it is open, else batched relay frames; acks 10 ms later so several messages share one;
 * retransmissions and the delivery bound at each tick (sender.js decides, this carries it
 * out). The room adds and removes peers and tells it what the paths do.
 */

import { Outbox, Inbox, envelopesOf, isEnvelope } from "./delivery.js";
import { RELAY_BATCH_CHARS, relayFrames, tickPeer } from "./sender.js";
import { PeerUnreachableError } from "./errors.js";

/** How often the retransmission check runs (sender.js decides what it does). */
const TICK_MS = 250;
/** Acks wait this long so that several messages share one. */
const ACK_DELAY_MS = 10;
/** Outbox bounds per peer: above either, sendMessage waits (back-pressure, never a drop). */
const OUTBOX_MAX_MESSAGES = 1024;
const OUTBOX_MAX_BYTES = 16 << 20;
/** The default delivery bound: a message not acknowledged this long after sendMessage rejects
 * with PeerUnreachableError, so no promise stays pending forever. */
const DELIVERY_TIMEOUT_MS = 60000;

/**
 * @typedef {import("./frames.js").Peer} Peer
 * @typedef {"p2p" | "relay"} Path
 */

/**
 * One peer of the room, as the room and its send loop see it.
 * @typedef {object} Remote
 * @property {Peer} info
 * @property {import("./mesh.js").PeerLink | null} link
 * @property {Outbox} outbox
 * @property {Inbox} inbox
 * @property {boolean} ackDue
 * @property {Path} path
 * @property {boolean} noWebrtc the peer said it cannot do WebRTC
 * @property {ReturnType<typeof setTimeout> | undefined} relinkTimer
 * @property {number} lastProgressAt when acks or the data channel's draining last showed progress
 * @property {number} lastBuffered the data channel's bufferedAmount at the last tick
 * @property {boolean} mismatch end-to-end encryption does not match with this peer: nothing
 *   goes to it, nothing of its is delivered (peers.js)
 */

/**
 * What the send loop needs of its room.
 * @typedef {object} SchedulerHost
 * @property {Map<string, Remote>} remotes the room's peers (the room adds and removes them)
 * @property {import("./signaling.js").Signaling} signaling the relay
 * @property {import("./e2ee.js").RoomCrypto | null} crypto the room's end-to-end encryption, if on
 * @property {() => boolean} canSendData whether this peer's token allows sending data
 * @property {number} [deliveryTimeoutMs]
 * @property {(remote: Remote, type: string, data: unknown, path: Path) => void} deliver a
 *   message that arrived, in order, once
 * @property {(peer: Peer, gap: {expected: number, held: number, partial: number}) => void} gap
 */

export class Scheduler {
  /** @param {SchedulerHost} host */
  constructor(host) {
    this.host = host;
    /** Per sender id, what was delivered from it (see inboxFor). @type {Map<string, Inbox>} */
    this.inboxes = new Map();
    /** The relay's rate limit asked to wait until then. */
    this.relayPausedUntil = 0;
    /** @type {(() => void)[]} */
    this.spaceWaiters = [];
    /** @type {ReturnType<typeof setInterval> | undefined} */
    this.ticker = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.ackTimer = undefined;
    this.flushScheduled = false;
    /** Admission of sends, in call order (see send). */
    this.admission = Promise.resolve();
  }

  /** Starts the retransmission check. */
  start() {
    this.ticker = setInterval(() => this.tick(), TICK_MS);
  }

  /** Stops every timer (the room ended). */
  stop() {
    clearInterval(this.ticker);
    clearTimeout(this.ackTimer);
  }

  /**
   * A new peer's send state (its inbox kept from an earlier visit with the same id).
   * @param {Peer} info
   * @returns {Remote}
   */
  newRemote(info) {
    return {
      info, link: null, outbox: new Outbox(), inbox: this.inboxFor(info.id), ackDue: false,
      lastProgressAt: 0, lastBuffered: 0,
      path: "relay", noWebrtc: false, relinkTimer: undefined, mismatch: false,
    };
  }

  /**
   * What this room has delivered from `id`, kept across that peer leaving and coming back with
   * the same id (a cluster may report a live peer gone and back): its sender may go on with
   * the same sequence space, and a fresh Inbox would deliver again what this app already got.
   * A sender that starts anew says so with a new epoch, and the Inbox follows.
   * @param {string} id
   */
  inboxFor(id) {
    let inbox = this.inboxes.get(id);
    if (!inbox) {
      inbox = new Inbox();
      this.inboxes.set(id, inbox);
    }
    return inbox;
  }

  /**
   * Queues one encoded message for each of `ids` (in call order across sends, waiting while an
   * outbox is full); resolves with the ids that did not acknowledge it.
   * @param {string[]} ids
   * @param {string} type
   * @param {{json: string, bytes: number}} encoded
   * @returns {Promise<string[]>}
   */
  async send(ids, type, encoded) {
    // Sends are admitted in call order: a send waiting for room in one peer's outbox must not
    // be overtaken by a later send to another peer set (that would reorder for a shared peer).
    const admitted = this.admission.then(() => this.waitForSpace(ids));
    this.admission = admitted;
    await admitted;
    const results = await Promise.all(
      ids.map((id) => {
        const remote = this.host.remotes.get(id);
        // (A peer found mismatched while this send waited for room: refused at once.)
        if (!remote || remote.mismatch) return Promise.resolve(id);
        const { done } = remote.outbox.add(type, encoded.json, encoded.bytes);
        this.scheduleFlush();
        return done.then(() => null, () => id);
      }),
    );
    return /** @type {string[]} */ (results.filter((r) => r !== null));
  }

  /**
   * A peer left: what it had not acknowledged fails with `error`, and what it had sent us
   * incomplete is reported as a gap.
   * @param {Remote} remote
   * @param {Error} error
   */
  dropPeer(remote, error) {
    remote.outbox.fail(error);
    const { held, chunks, expected } = remote.inbox;
    if (held.size > 0 || chunks.size > 0) {
      // Delivery from this peer became impossible with messages outstanding: say so.
      this.host.gap(remote.info, { expected, held: held.size, partial: chunks.size });
      held.clear();
      chunks.clear();
    }
    this.wakeSpaceWaiters();
  }

  /**
   * The relay's rate limit: nothing goes over it for this long.
   * @param {number} ms
   */
  pauseRelay(ms) {
    this.relayPausedUntil = Date.now() + ms;
  }

  /**
   * The server could not pass frames to these peers now (their node is away, or being
   * replaced): retry soon rather than after a back-off grown while the path was down.
   * @param {string[]} ids
   */
  retrySoon(ids) {
    for (const id of ids) for (const e of this.host.remotes.get(id)?.outbox.pending ?? []) e.tries = 0;
  }

  /**
   * A peer's data channel opened (what never went out goes over it now) or closed (everything
   * unacknowledged goes over the relay now).
   * @param {Remote} remote
   * @param {boolean} open
   */
  onChannel(remote, open) {
    if (open) this.transmit(remote, remote.outbox.pending.filter((e) => e.via === "none"), false);
    else this.transmit(remote, remote.outbox.pending, true);
  }

  /**
   * @param {Remote} remote
   * @param {string} text a data channel message
   */
  onChannelData(remote, text) {
    let env;
    try {
      env = JSON.parse(text);
    } catch {
      return;
    }
    this.onEnvelope(remote, env, "p2p");
  }

  /**
   * @param {Remote} remote
   * @param {unknown} env
   * @param {Path} path
   */
  onEnvelope(remote, env, path) {
    if (!isEnvelope(env)) return;
    if (env.k === "a") {
      if (remote.outbox.ack(env.a, env.e) > 0) {
        remote.lastProgressAt = Date.now();
        this.wakeSpaceWaiters();
      }
      return;
    }
    const delivered = remote.inbox.receive(env);
    remote.ackDue = true;
    this.scheduleAcks();
    for (const m of delivered) this.host.deliver(remote, m.type, m.data, path);
  }

  /** Sends what could not go out (rate limit, socket down), and acks that are due. */
  sendUnsent() {
    for (const remote of this.host.remotes.values()) {
      const unsent = remote.outbox.pending.filter((e) => e.sentAt === 0);
      if (unsent.length > 0) this.transmit(remote, unsent, false);
    }
    this.scheduleAcks();
  }

  /** Sends new messages once the current task is done, so a burst shares relay frames. */
  scheduleFlush() {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => {
      this.flushScheduled = false;
      for (const remote of this.host.remotes.values()) {
        const fresh = remote.outbox.pending.filter((e) => e.via === "none");
        if (fresh.length > 0) this.transmit(remote, fresh, false);
      }
    });
  }

  scheduleAcks() {
    if (this.ackTimer !== undefined) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = undefined;
      const { signaling } = this.host;
      for (const remote of this.host.remotes.values()) {
        if (!remote.ackDue) continue;
        const env = remote.inbox.ack();
        const ack = JSON.stringify(env);
        // A peer without `sendData` has its relayed `send`s refused: its acks go as signals
        // (which carry only acks: the receiver takes nothing else from a signal's `ack`).
        const sent =
          remote.link?.send(ack) ||
          (this.host.canSendData() ? this.relay(remote, env) : this.ackSignal(remote, env));
        remote.ackDue = !sent;
      }
    }, ACK_DELAY_MS);
  }

  /**
   * Sends entries to one peer: over the data channel when it is open (and `relayOnly` is
   * false), otherwise batched over the relay. Entries that cannot go anywhere now keep
   * `sentAt` 0 and are picked up by the next tick.
   * @param {Remote} remote
   * @param {import("./delivery.js").Pending[]} entries
   * @param {boolean} relayOnly
   */
  transmit(remote, entries, relayOnly) {
    const now = Date.now();
    /** @type {{entry: import("./delivery.js").Pending, json: string, envs: import("./delivery.js").Envelope[]}[]} */
    const relay = [];
    for (const entry of entries) {
      const envs = envelopesOf(entry.seq, entry.type, entry.json, remote.outbox);
      if (!relayOnly && remote.link?.open && envs.every((e) => remote.link?.send(JSON.stringify(e)))) {
        entry.via = "p2p";
        entry.sentAt = now;
        remote.lastProgressAt = now;
        continue;
      }
      entry.via = "relay";
      entry.sentAt = now;
      relay.push({ entry, json: entry.json, envs });
    }
    // In frames, in order (sender.js). A frame that cannot go now (the rate limit's pause, the
    // socket down) leaves its messages and every later one unsent (sentAt 0): they go with the
    // next chance (the rate limit's onWritable, a tick, a resume).
    // (Sealed, a frame's text grows by a third, base64: half a frame's usual payload keeps a
    // sealed one within the server's frame limit whatever the characters.)
    for (const frame of relayFrames(relay, this.host.crypto ? RELAY_BATCH_CHARS / 2 : RELAY_BATCH_CHARS)) {
      const ok = Date.now() >= this.relayPausedUntil && this.relay(remote, frame.envs);
      if (!ok) {
        for (const rest of relay.slice(frame.first)) rest.entry.sentAt = 0;
        return;
      }
    }
  }

  /**
   * Sends `msg` (envelopes) to one peer over the relay: sealed first when the room is
   * encrypted (in order, after the pair's key exchange). False when it cannot go now (the
   * socket is down, or the rate limit says wait): the caller tries again later.
   * @param {Remote} remote
   * @param {unknown} msg
   */
  relay(remote, msg) {
    const { signaling, crypto } = this.host;
    const to = [remote.info.id];
    if (!crypto) return signaling.send({ op: "send", to, msg });
    // Not before the pair's keys exist (peers.js sends what waited once they do); the frame's
    // share of the rate limit is taken now (sealing takes a moment).
    const pair = crypto.pair(remote.info.id);
    if (pair.state !== "ready" || !signaling.connected || !signaling.takeToken()) return false;
    void pair.seal("relay", JSON.stringify(msg), (rec) => signaling.sendTaken({ op: "send", to, msg: rec }));
    return true;
  }

  /**
   * An acknowledgement as a signal (from a peer whose token may not send data).
   * @param {Remote} remote
   * @param {import("./delivery.js").AckEnvelope} env
   */
  ackSignal(remote, env) {
    const { signaling, crypto } = this.host;
    const to = remote.info.id;
    if (!crypto) return signaling.send({ op: "signal", to, data: { ack: env } });
    const pair = crypto.pair(to);
    if (pair.state !== "ready" || !signaling.connected || !signaling.takeToken()) return false;
    void pair.sealSignal({ ack: env }, (rec) => signaling.sendTaken({ op: "signal", to, data: rec }));
    return true;
  }

  /** Resends everything unacknowledged (after a reconnection). */
  retransmitAll() {
    for (const remote of this.host.remotes.values()) {
      this.transmit(remote, remote.outbox.pending, !remote.link?.open);
      if (remote.ackDue) this.scheduleAcks();
    }
  }

  /** Retransmits what has waited too long for its ack, over the relay. */
  tick() {
    const now = Date.now();
    const bound = this.host.deliveryTimeoutMs ?? DELIVERY_TIMEOUT_MS;
    for (const remote of this.host.remotes.values()) {
      const linkOpen = !!remote.link?.open;
      const decision = tickPeer(remote.outbox.pending, {
        linkOpen,
        buffered: linkOpen ? remote.link?.dc.bufferedAmount ?? 0 : 0,
        lastBuffered: remote.lastBuffered,
        lastProgressAt: remote.lastProgressAt,
      }, now, bound);
      if (decision.expire) {
        // Past the delivery bound: the sender is told, for this message and every later one
        // still unacknowledged (delivering those alone would break the order). A rejected
        // message may have arrived (its ack lost) or still arrive until the peer hears of the
        // new sequence space (a new epoch) this starts; after that, the old one is stale to it.
        const stuck = remote.outbox;
        remote.outbox = new Outbox();
        const id = remote.info.id;
        stuck.fail(new PeerUnreachableError(`peer ${id} did not acknowledge within ${bound / 1000} s`, [id]));
        this.wakeSpaceWaiters();
        continue;
      }
      remote.lastProgressAt = decision.lastProgressAt;
      remote.lastBuffered = decision.lastBuffered;
      if (decision.due.length > 0) this.transmit(remote, decision.due, this.host.signaling.connected);
      if (remote.ackDue) this.scheduleAcks();
    }
  }

  /** @param {string[]} ids */
  async waitForSpace(ids) {
    const full = () => ids.some((id) => {
      const o = this.host.remotes.get(id)?.outbox;
      return o !== undefined && (o.pending.length >= OUTBOX_MAX_MESSAGES || o.bytes >= OUTBOX_MAX_BYTES);
    });
    while (full()) await new Promise((resolve) => this.spaceWaiters.push(() => resolve(undefined)));
  }

  wakeSpaceWaiters() {
    const waiters = this.spaceWaiters;
    this.spaceWaiters = [];
    for (const w of waiters) w();
  }
}
