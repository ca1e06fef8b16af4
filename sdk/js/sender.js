// @ts-check
/**
 * The sender's decisions, pure: what each peer's outbox must do at a tick (give up past the
 * delivery bound, or retransmit what waited too long for its ack), from the outbox and what the
 * room knows of the path, with the time given; and how a relay send is cut into frames. No
 * clock, no I/O: bluecam.js carries the decisions out (and acknowledges what arrived, 10 ms
 * later, so that several messages share one ack), and sender.test.js drives them with any
 * clock.
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
/** Characters of payload one relay frame carries at most (one envelope at least). */
export const RELAY_BATCH_CHARS = 256 * 1024;
/** What a relay frame costs beyond an envelope's payload, as counted against the cap. */
const ENVELOPE_OVERHEAD_CHARS = 100;

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

/**
 * How a relay send of one peer's messages is cut into frames, in order: each frame carries the
 * envelopes of one or more messages (a chunked message may span frames), at most `maxChars` of
 * payload but at least one envelope.
 * @param {{json: string, envs: import("./delivery.js").Envelope[]}[]} messages in send order
 * @param {number} [maxChars]
 * @returns {{envs: import("./delivery.js").Envelope[], first: number}[]} the frames, each with the
 *   index of the first message it carries (part of): if a frame cannot go, that message and every
 *   later one wait for the next chance
 */
export function relayFrames(messages, maxChars = RELAY_BATCH_CHARS) {
  /** @type {{envs: import("./delivery.js").Envelope[], first: number}[]} */
  const frames = [];
  /** @type {{envs: import("./delivery.js").Envelope[], first: number} | null} */
  let frame = null;
  let chars = 0;
  for (const [i, m] of messages.entries()) {
    for (const env of m.envs) {
      const size = (env.k === "c" ? env.p.length : m.json.length) + ENVELOPE_OVERHEAD_CHARS;
      if (!frame || (chars > 0 && chars + size > maxChars)) {
        frame = { envs: [], first: i };
        frames.push(frame);
        chars = 0;
      }
      frame.envs.push(env);
      chars += size;
    }
  }
  return frames;
}
