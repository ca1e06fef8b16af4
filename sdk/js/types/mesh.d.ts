/** Whether this browser can do WebRTC at all. */
export function webrtcAvailable(): boolean;
export class PeerLink {
    /**
     * @param {boolean} polite the polite side yields in an offer collision
     * @param {RTCConfiguration} rtcConfig the ICE servers and transport policy
     * @param {MediaStream | null} local
     * @param {LinkHandlers} handlers
     * @param {boolean} [receiveMedia] whether this side takes the other side's media
     * @param {import("./e2ee.js").Pair | null} [pair] the room is encrypted: every message on the
     *   data channel is sealed for this peer (e2ee.js), and one that is not is dropped
     */
    constructor(polite: boolean, rtcConfig: RTCConfiguration, local: MediaStream | null, handlers: LinkHandlers, receiveMedia?: boolean, pair?: import("./e2ee.js").Pair | null);
    polite: boolean;
    pair: import("./e2ee.js").Pair | null;
    /** Whether this side takes the other's media (a token's `subscribeMedia`). */
    receiveMedia: boolean;
    /** This connection's generation: every signal it sends carries it. */
    gen: string;
    /** @type {string | undefined} the remote connection this one negotiates with */
    remoteGen: string | undefined;
    handlers: LinkHandlers;
    /** @param {Record<string, unknown>} data */
    signal: (data: Record<string, unknown>) => void;
    makingOffer: boolean;
    ignoreOffer: boolean;
    /** Signals are applied one after the other, in the order they came (a poll of the HTTP
     * transport hands over an offer and its candidates in one go). */
    signals: Promise<void>;
    /** @type {RTCIceCandidateInit[]} candidates that came before any remote description */
    earlyCandidates: RTCIceCandidateInit[];
    /** @type {string[]} what happened, for debugging negotiation */
    trace: string[];
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    firstOfferTimer: ReturnType<typeof setTimeout> | undefined;
    closed: boolean;
    pc: RTCPeerConnection;
    /** @type {Map<string, RTCRtpSender>} kind → sender, for replaceTrack */
    senders: Map<string, RTCRtpSender>;
    /** Tracks held back until the first exchange is done (data first), by kind.
     * @type {Map<string, {track: MediaStreamTrack, stream: MediaStream}>} */
    pending: Map<string, {
        track: MediaStreamTrack;
        stream: MediaStream;
    }>;
    /** Whether tracks are still held back (`pending`) rather than sent. */
    held: boolean;
    /** Whether the first offer and answer are done, and whether this side made that offer. */
    exchanged: boolean;
    firstOfferer: boolean;
    /** The kinds of media the remote side said it sends in its first description; undefined
     * when it said nothing (an SDK that sends its tracks in the first offer). @type {string[] | undefined} */
    remoteSends: string[] | undefined;
    /** The kinds this side said it sends. @type {string[]} */
    announced: string[];
    dc: RTCDataChannel;
    /** Whether the next offer goes over the data channel (the media offer, see above). */
    offerOverChannel: boolean;
    /** Offers made so far (which one is still the one waiting to be answered). */
    offers: number;
    /** An ICE restart waits for the next offer (which then goes through the server). */
    restarting: boolean;
    gotOffer: boolean;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    disconnectedTimer: ReturnType<typeof setTimeout> | undefined;
    /** ICE restarts so far (for tests and debugging). */
    iceRestarts: number;
    /**
     * A data channel message (opened, when the room is encrypted): a signal, or app data.
     * @param {string} text
     */
    onChannelText(text: string): void;
    /**
     * Puts a message on the data channel, sealed first when the room is encrypted (in order; one
     * sealed while the channel closed is lost with it, as unsent messages are: the send loop
     * retransmits over the relay).
     * @param {string} text
     */
    channelSend(text: string): void;
    /**
     * Records a negotiation step (the last few, for debugging a connection that never opens).
     * @param {string} what
     */
    note(what: string): void;
    /** What a description signal carries: the description, and in the first exchange the kinds
     * of media this side will send once the data channel is open. */
    describe(): {
        description: RTCSessionDescription | null;
        sends?: undefined;
    } | {
        description: RTCSessionDescription | null;
        sends: string[];
    };
    /**
     * Sends the held-back tracks (into the receive slots the remote offer made, when called
     * between its offer and our answer; as new tracks otherwise, which renegotiates).
     */
    release(): void;
    /**
     * Whether our offers go over the data channel: the peer reads signals there (it said
     * `sends`) and the channel is open and ICE connected; not an offer with an ICE restart (its
     * new candidates go through the server and must not arrive before it). Once descriptions go
     * over the channel, every one of a side's goes the same way while the link is up, so that one
     * never overtakes another (perfect negotiation needs them in order); answers go the way their
     * offer came.
     */
    channelUsable(): boolean;
    /**
     * Sends a description over the data channel, or through the server when the channel is not
     * open (it closed meanwhile: the relink that follows starts over anyway).
     * @param {Record<string, unknown>} data
     * @param {boolean} overChannel
     */
    sendDescription(data: Record<string, unknown>, overChannel: boolean): void;
    /**
     * Sends our offer over the data channel once it opens, or through the server if it has not
     * within CHANNEL_OFFER_WAIT_MS (ICE still checking, or failing: an ICE restart needs this
     * offer answered first). Not if the offer was rolled back or replaced meanwhile.
     * @param {Record<string, unknown>} data
     */
    sendOfferOverChannel(data: Record<string, unknown>): void;
    /** The first exchange is done (or, on the other side, the data channel is open): media
     * follows (the module's comment). */
    startMedia(): void;
    makeOffer(): Promise<void>;
    /** Whether the data channel can carry messages now. */
    get open(): boolean;
    /**
     * Sends a data channel message; false when the channel is not open or is backed up.
     * @param {string} text
     */
    send(text: string): boolean;
    /**
     * Queues signaling data from the remote peer, applied after what came before it.
     * @param {any} data
     * @param {boolean} [overChannel] it came over the data channel (an offer is answered there)
     */
    enqueueSignal(data: any, overChannel?: boolean): void;
    /**
     * Applies signaling data from the remote peer (perfect negotiation).
     * @param {any} data
     * @param {boolean} [overChannel] it came over the data channel (an offer is answered there)
     */
    handleSignal(data: any, overChannel?: boolean): Promise<void>;
    /**
     * Sends `track` as this connection's track of its kind: in place of the one sent now (no
     * renegotiation), or as a new track (renegotiated) when none of that kind is sent. `null`
     * sends nothing of `kind` in its place (a camera turned off), without renegotiation.
     * @param {MediaStreamTrack | null} track
     * @param {MediaStream} stream
     * @param {string} [kind]
     */
    setTrack(track: MediaStreamTrack | null, stream: MediaStream, kind?: string): Promise<void>;
    /**
     * Without `receiveMedia`, every media slot only sends (or, with nothing to send, is
     * inactive), so that the other side sends nothing: set before each offer and answer.
     */
    sendOnly(): void;
    /**
     * Stops sending any track of `kind` (renegotiated: the other side's track ends).
     * @param {string} kind
     */
    removeTrack(kind: string): void;
    /**
     * Gathers new candidates and renegotiates them (new ICE credentials, same tracks and data
     * channel): media and data come back on the new path without leaving the room.
     * @param {string} why
     */
    restartIce(why: string): void;
    close(): void;
}
export type LinkHandlers = {
    /**
     * send signaling data to the remote peer (via the server)
     */
    signal: (data: unknown) => void;
    /**
     * a data channel message
     */
    onData: (text: string) => void;
    /**
     * the data channel opened or closed
     */
    onChannel: (open: boolean) => void;
    /**
     * a remote stream arrived
     */
    onStream: (stream: MediaStream) => void;
};
