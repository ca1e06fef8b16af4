// @ts-check
/**
 * The sender's timing decisions, pure: what each peer's outbox must do at a tick (give up past
 * the delivery bound, or retransmit what waited too long for its ack), from the outbox and what
 * the room knows of the path, with the time given. No clock, no I/O: bluecam.js carries the
 * decisions out, and sender.test.js drives them with any clock.
 */

/** A message not acknowledged this long is sent again, over the relay; each further attempt
 * waits twice as long, up to RETRANSMIT_MAX_MS, so a peer that is away (its frames kept by the
 * server for its resume) is not flooded. */
export const RETRANSMIT_MS = 1500;
export const RETRANSMIT_MAX_MS = 30000;
/** The slowest path waited for before a large send counts as stalled: 1 MB/s. */
export const SLOWEST_BYTES_PER_MS = 1000;
/** Bytes of retransmissions per tick at most (at least one message goes). */
export const RETRANSMIT_BYTES_PER_TICK = 256 * 1024;

/**
 * What the room knows of one peer's path at a tick.
 * @typedef {object} PathState
 * @property {boolean} linkOpen the data channel is open
 * @property {number} buffered the data channel's bufferedAmount now (0 when closed)
 * @property {number} lastBuffered its bufferedAmount at the tick before
 * @property {number} lastProgressAt when acks or the channel's draining last showed progress
 */

/**
 * One peer's decision at a tick.
 * @typedef {{expire: true} | {expire: false, due: import("./delivery.js").Pending[], lastProgressAt: number, lastBuffered: number}} TickDecision
 *   `expire`: the oldest message is past the delivery bound: fail it and every later one (the
 *   pair then starts a new sequence space). Otherwise `due`: the messages to send now (never
 *   sent, or waited their retransmission time on a path that is not making progress), and the
 *   path's progress as the room must keep it.
 */

/**
 * The retransmission timeout of a message: doubling per attempt up to the cap, plus the time
 * the slowest path needs to carry its bytes.
 * @param {{tries: number, bytes: number}} entry
 */
export function retransmitTimeout(entry) {
  return Math.min(RETRANSMIT_MS * 2 ** entry.tries, RETRANSMIT_MAX_MS) + entry.bytes / SLOWEST_BYTES_PER_MS;
}

/**
 * Decides one peer's tick. Pure but for one effect on what it returns: a message chosen for a
 * retransmission counts one more try.
 * @param {import("./delivery.js").Pending[]} pending the outbox, oldest first
 * @param {PathState} path
 * @param {number} now
 * @param {number} deliveryTimeoutMs
 * @returns {TickDecision}
 */
export function tickPeer(pending, path, now, deliveryTimeoutMs) {
  const oldest = pending[0];
  if (oldest && now - oldest.addedAt >= deliveryTimeoutMs) return { expire: true };
  // A data channel still draining a large send is slow, not stalled.
  const lastProgressAt = path.buffered > 0 && path.buffered < path.lastBuffered ? now : path.lastProgressAt;
  let budget = RETRANSMIT_BYTES_PER_TICK;
  const due = pending.filter((e) => {
    const rto = retransmitTimeout(e);
    const stalled = e.via !== "p2p" || !path.linkOpen || now - lastProgressAt >= rto;
    if (e.sentAt > 0 && (now - e.sentAt < rto || !stalled)) return false;
    if (budget <= 0) return false;
    budget -= e.bytes;
    if (e.sentAt > 0) e.tries++;
    return true;
  });
  return { expire: false, due, lastProgressAt, lastBuffered: path.buffered };
}
