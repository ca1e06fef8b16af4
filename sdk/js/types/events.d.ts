export namespace OPTION_OF {
    let message: "onMessage";
    let peerJoined: "onPeerJoined";
    let peerLeft: "onPeerLeft";
    let stream: "onStream";
    let mediaChange: "onMediaChange";
    let pathChange: "onPathChange";
    let connectionChange: "onConnectionChange";
    let error: "onError";
    let gap: "onGap";
}
export class Emitter {
    /**
     * @template {RoomEventName} K
     * @param {K} event
     * @param {(...args: RoomEvents[K]) => void} handler
     * @returns {() => void} removes the handler
     */
    on<K extends RoomEventName>(event: K, handler: (...args: RoomEvents[K]) => void): () => void;
    /**
     * Removes a handler given to `on` (the earliest registration of it, if it was given twice).
     * @template {RoomEventName} K
     * @param {K} event
     * @param {(...args: RoomEvents[K]) => void} handler
     */
    off<K extends RoomEventName>(event: K, handler: (...args: RoomEvents[K]) => void): void;
    /** @param {RoomEventName} event */
    has(event: RoomEventName): boolean;
    /**
     * Hands an event to its handlers, now or, during the join, once it has resolved.
     * @template {RoomEventName} K
     * @param {K} event
     * @param {RoomEvents[K]} args
     */
    emit<K extends RoomEventName>(event: K, ...args: RoomEvents[K]): void;
    /**
     * The join resolved: what it held is delivered a task from now (after the code that awaits
     * `joinRoom`), then events go out as they happen.
     */
    release(): void;
    /** Delivers what was held, now, and every event from now on as it happens. */
    flush(): void;
    #private;
}
export type Peer = import("./frames.js").Peer;
export type Path = "p2p" | "relay";
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "disconnected";
export type Gap = {
    expected: number;
    held: number;
    partial: number;
};
/**
 * why a peer
 * left: it left, its connection was lost for longer than the resume window, the app's
 * backend removed it, or a newer session of its identity took its seat
 */
export type LeaveReason = "left" | "timeout" | "kicked" | "replaced" | (string & {});
/**
 * Each event and the arguments its handlers get.
 */
export type RoomEvents = {
    /**
     * an app message
     * (binary data arrives as a `Uint8Array`)
     */
    message: [
        type: string,
        data: any,
        from: Peer,
        meta: {
            path: Path;
        }
    ];
    peerJoined: [
        peer: Peer
    ];
    peerLeft: [
        peer: Peer,
        reason: LeaveReason
    ];
    /**
     * a peer's media arrived
     */
    stream: [
        peer: Peer,
        stream: MediaStream
    ];
    /**
     * a peer turned
     * its camera or microphone on or off
     */
    mediaChange: [
        peer: Peer,
        state: {
            audio: boolean;
            video: boolean;
        }
    ];
    /**
     * messages to this peer now take this path
     */
    pathChange: [
        peer: Peer,
        path: Path
    ];
    /**
     * the link to the server
     */
    connectionChange: [
        state: ConnectionState
    ];
    error: [
        error: import("./errors.js").BlueCamError | Error
    ];
    /**
     * a peer left while some of its messages to us were
     * incomplete: message `expected` never arrived, `held` later ones and `partial` chunked ones
     * are dropped with it
     */
    gap: [
        peer: Peer,
        gap: Gap
    ];
};
export type RoomEventName = keyof RoomEvents;
