/**
 * @typedef {import("./frames.js").Peer} Peer
 * @typedef {import("./scheduler.js").Remote} Remote
 * @typedef {import("./scheduler.js").Path} Path
 */
/**
 * What the peers need of their room.
 * @typedef {object} PeersHost
 * @property {Map<string, Remote>} remotes the room's peers (shared with the send loop)
 * @property {import("./bluecam.js").AnyOptions} options the ICE policy
 * @property {import("./signaling.js").Signaling} signaling
 * @property {import("./scheduler.js").Scheduler} scheduler
 * @property {import("./media.js").LocalMedia} media
 * @property {() => Peer} self
 * @property {() => RTCIceServer[]} iceServers
 * @property {import("./e2ee.js").RoomCrypto | null} crypto the room's end-to-end encryption, if on
 * @property {() => boolean} left whether the room was left or ended
 * @property {() => boolean} receiveMedia whether the token lets this peer receive media
 *   (`permissions.subscribeMedia`)
 * @property {<K extends import("./events.js").RoomEventName>(event: K, ...args: import("./events.js").RoomEvents[K]) => void} emit
 *   hands an event to the app's handlers
 */
export class Peers {
    /** @param {PeersHost} host */
    constructor(host: PeersHost);
    host: PeersHost;
    remotes: Map<string, import("./scheduler.js").Remote>;
    /** The peers in the room now (without yourself). */
    list(): import("./frames.js").Peer[];
    /**
     * The path messages to this peer take now.
     * @param {string} peerId
     * @returns {Path}
     */
    path(peerId: string): Path;
    /** Every peer connection now. */
    links(): PeerLink[];
    /**
     * @param {Peer} info
     * @param {boolean} announce call onPeerJoined
     */
    add(info: Peer, announce: boolean): void;
    /** @param {Remote} remote */
    link(remote: Remote): void;
    /**
     * @param {string} id
     * @param {Error} [error]
     * @param {import("./events.js").LeaveReason} [reason] why the server says it left
     */
    remove(id: string, error?: Error, reason?: import("./events.js").LeaveReason): void;
    /**
     * @param {string} to
     * @param {unknown} data
     */
    signal(to: string, data: unknown): void;
    /**
     * Sends our key exchange's hello to a peer (not sealed: it is what the seals come from).
     * @param {string} to
     */
    sendHello(to: string): void;
    /**
     * End-to-end encryption does not match with this peer (another room key, or one side has
     * none, or it sent in the clear what must be sealed): nothing goes to it or comes from it,
     * and no peer-to-peer connection is made (its signaling cannot be trusted). Both sides say so.
     * @param {Remote} remote
     * @param {string} why
     */
    mismatch(remote: Remote, why: string): void;
    /**
     * A relayed message from a peer: its envelopes, opened first when the room is encrypted.
     * @param {Remote} remote
     * @param {unknown} msg
     */
    onRelayed(remote: Remote, msg: unknown): void;
    /**
     * @param {string} from
     * @param {any} data
     */
    onSignal(from: string, data: any): void;
    /**
     * Signaling data from a peer, in the clear (or opened).
     * @param {Remote} remote
     * @param {any} data
     */
    onOpenSignal(remote: Remote, data: any): void;
    /** Tells every peer whether our microphone and camera are on. */
    announceMedia(): void;
    /**
     * @param {Remote} remote
     * @param {boolean} open
     */
    onChannel(remote: Remote, open: boolean): void;
    /**
     * @param {Remote} remote
     * @param {MediaStream} stream
     */
    onStream(remote: Remote, stream: MediaStream): void;
}
export type Peer = import("./frames.js").Peer;
export type Remote = import("./scheduler.js").Remote;
export type Path = import("./scheduler.js").Path;
/**
 * What the peers need of their room.
 */
export type PeersHost = {
    /**
     * the room's peers (shared with the send loop)
     */
    remotes: Map<string, Remote>;
    /**
     * the ICE policy
     */
    options: import("./bluecam.js").AnyOptions;
    signaling: import("./signaling.js").Signaling;
    scheduler: import("./scheduler.js").Scheduler;
    media: import("./media.js").LocalMedia;
    self: () => Peer;
    iceServers: () => RTCIceServer[];
    /**
     * the room's end-to-end encryption, if on
     */
    crypto: import("./e2ee.js").RoomCrypto | null;
    /**
     * whether the room was left or ended
     */
    left: () => boolean;
    /**
     * whether the token lets this peer receive media
     * (`permissions.subscribeMedia`)
     */
    receiveMedia: () => boolean;
    /**
     *   hands an event to the app's handlers
     */
    emit: <K extends import("./events.js").RoomEventName>(event: K, ...args: import("./events.js").RoomEvents[K]) => void;
};
import { PeerLink } from "./mesh.js";
