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
    constructor(host: SchedulerHost);
    host: SchedulerHost;
    /** Per sender id, what was delivered from it (see inboxFor). @type {Map<string, Inbox>} */
    inboxes: Map<string, Inbox>;
    /** The relay's rate limit asked to wait until then. */
    relayPausedUntil: number;
    /** @type {(() => void)[]} */
    spaceWaiters: (() => void)[];
    /** @type {ReturnType<typeof setInterval> | undefined} */
    ticker: ReturnType<typeof setInterval> | undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    ackTimer: ReturnType<typeof setTimeout> | undefined;
    flushScheduled: boolean;
    /** Admission of sends, in call order (see send). */
    admission: Promise<void>;
    /** Starts the retransmission check. */
    start(): void;
    /** Stops every timer (the room ended). */
    stop(): void;
    /**
     * A new peer's send state (its inbox kept from an earlier visit with the same id).
     * @param {Peer} info
     * @returns {Remote}
     */
    newRemote(info: Peer): Remote;
    /**
     * What this room has delivered from `id`, kept across that peer leaving and coming back with
     * the same id (a cluster may report a live peer gone and back): its sender may go on with
     * the same sequence space, and a fresh Inbox would deliver again what this app already got.
     * A sender that starts anew says so with a new epoch, and the Inbox follows.
     * @param {string} id
     */
    inboxFor(id: string): Inbox;
    /**
     * Queues one encoded message for each of `ids` (in call order across sends, waiting while an
     * outbox is full); resolves with the ids that did not acknowledge it.
     * @param {string[]} ids
     * @param {string} type
     * @param {{json: string, bytes: number}} encoded
     * @returns {Promise<string[]>}
     */
    send(ids: string[], type: string, encoded: {
        json: string;
        bytes: number;
    }): Promise<string[]>;
    /**
     * A peer left: what it had not acknowledged fails with `error`, and what it had sent us
     * incomplete is reported as a gap.
     * @param {Remote} remote
     * @param {Error} error
     */
    dropPeer(remote: Remote, error: Error): void;
    /**
     * The relay's rate limit: nothing goes over it for this long.
     * @param {number} ms
     */
    pauseRelay(ms: number): void;
    /**
     * The server could not pass frames to these peers now (their node is away, or being
     * replaced): retry soon rather than after a back-off grown while the path was down.
     * @param {string[]} ids
     */
    retrySoon(ids: string[]): void;
    /**
     * A peer's data channel opened (what never went out goes over it now) or closed (everything
     * unacknowledged goes over the relay now).
     * @param {Remote} remote
     * @param {boolean} open
     */
    onChannel(remote: Remote, open: boolean): void;
    /**
     * @param {Remote} remote
     * @param {string} text a data channel message
     */
    onChannelData(remote: Remote, text: string): void;
    /**
     * @param {Remote} remote
     * @param {unknown} env
     * @param {Path} path
     */
    onEnvelope(remote: Remote, env: unknown, path: Path): void;
    /** Sends what could not go out (rate limit, socket down), and acks that are due. */
    sendUnsent(): void;
    /** Sends new messages once the current task is done, so a burst shares relay frames. */
    scheduleFlush(): void;
    scheduleAcks(): void;
    /**
     * Sends entries to one peer: over the data channel when it is open (and `relayOnly` is
     * false), otherwise batched over the relay. Entries that cannot go anywhere now keep
     * `sentAt` 0 and are picked up by the next tick.
     * @param {Remote} remote
     * @param {import("./delivery.js").Pending[]} entries
     * @param {boolean} relayOnly
     */
    transmit(remote: Remote, entries: import("./delivery.js").Pending[], relayOnly: boolean): void;
    /**
     * Sends `msg` (envelopes) to one peer over the relay: sealed first when the room is
     * encrypted (in order, after the pair's key exchange). False when it cannot go now (the
     * socket is down, or the rate limit says wait): the caller tries again later.
     * @param {Remote} remote
     * @param {unknown} msg
     */
    relay(remote: Remote, msg: unknown): boolean;
    /**
     * An acknowledgement as a signal (from a peer whose token may not send data).
     * @param {Remote} remote
     * @param {import("./delivery.js").AckEnvelope} env
     */
    ackSignal(remote: Remote, env: import("./delivery.js").AckEnvelope): boolean;
    /** Resends everything unacknowledged (after a reconnection). */
    retransmitAll(): void;
    /** Retransmits what has waited too long for its ack, over the relay. */
    tick(): void;
    /** @param {string[]} ids */
    waitForSpace(ids: string[]): Promise<void>;
    wakeSpaceWaiters(): void;
}
export type Peer = import("./frames.js").Peer;
export type Path = "p2p" | "relay";
/**
 * One peer of the room, as the room and its send loop see it.
 */
export type Remote = {
    info: Peer;
    link: import("./mesh.js").PeerLink | null;
    outbox: Outbox;
    inbox: Inbox;
    ackDue: boolean;
    path: Path;
    /**
     * the peer said it cannot do WebRTC
     */
    noWebrtc: boolean;
    relinkTimer: ReturnType<typeof setTimeout> | undefined;
    /**
     * when acks or the data channel's draining last showed progress
     */
    lastProgressAt: number;
    /**
     * the data channel's bufferedAmount at the last tick
     */
    lastBuffered: number;
    /**
     * end-to-end encryption does not match with this peer: nothing
     * goes to it, nothing of its is delivered (peers.js)
     */
    mismatch: boolean;
};
/**
 * What the send loop needs of its room.
 */
export type SchedulerHost = {
    /**
     * the room's peers (the room adds and removes them)
     */
    remotes: Map<string, Remote>;
    /**
     * the relay
     */
    signaling: import("./signaling.js").Signaling;
    /**
     * the room's end-to-end encryption, if on
     */
    crypto: import("./e2ee.js").RoomCrypto | null;
    /**
     * whether this peer's token allows sending data
     */
    canSendData: () => boolean;
    deliveryTimeoutMs?: number | undefined;
    /**
     * a
     * message that arrived, in order, once
     */
    deliver: (remote: Remote, type: string, data: unknown, path: Path) => void;
    gap: (peer: Peer, gap: {
        expected: number;
        held: number;
        partial: number;
    }) => void;
};
import { Inbox } from "./delivery.js";
import { Outbox } from "./delivery.js";
