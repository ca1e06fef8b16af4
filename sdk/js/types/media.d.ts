/**
 * Media and the page: the camera and the screen, this peer's own media (`LocalMedia`), and the
 * elements a room draws into (the local preview, one video per peer in `remoteVideos`, the
 * classic one-to-one `remoteVideo`) and listens to (the classic buttons). No connection state:
 * the room says what to show and which connections carry what, this module does it.
 */
/**
 * An element from an element, an element id, or a CSS selector. An id comes first: classic
 * pages pass bare ids, and "video" is an id there, not the first <video>.
 * @template {Element} T
 * @param {T | string | undefined} target
 * @returns {T | null}
 */
export function resolveElement<T extends Element>(target: T | string | undefined): T | null;
/** Whether this browser can open a camera at all (not on an insecure origin, say). */
export function cameraAvailable(): boolean;
/**
 * The camera and microphone, as the room's options ask.
 * @param {{video?: boolean | MediaTrackConstraints, audio?: boolean | MediaTrackConstraints}} want
 */
export function openCamera(want: {
    video?: boolean | MediaTrackConstraints;
    audio?: boolean | MediaTrackConstraints;
}): Promise<MediaStream>;
/** The screen (or a window, or a tab: the browser asks the user). */
export function openScreen(): Promise<MediaStream>;
/**
 * What the classic buttons control.
 * @typedef {object} CallControls
 * @property {() => boolean} inCall the call's media is on (callBtn)
 * @property {() => Promise<void>} startCall
 * @property {() => void} hangUp
 * @property {() => boolean} audioOn
 * @property {() => boolean} videoOn
 * @property {(on: boolean) => void} setAudio
 * @property {(on: boolean) => Promise<void>} setVideo
 * @property {(error: Error) => void} onError
 */
/**
 * Wires the classic buttons: `callBtn` starts the call's media, then hangs up; the mute buttons
 * toggle the microphone and the camera. `aria-pressed` shows each state.
 * @param {{callBtn?: HTMLElement | string, muteAudioBtn?: HTMLElement | string, muteVideoBtn?: HTMLElement | string}} targets
 * @param {CallControls} controls
 */
export function wireButtons(targets: {
    callBtn?: HTMLElement | string;
    muteAudioBtn?: HTMLElement | string;
    muteVideoBtn?: HTMLElement | string;
}, controls: CallControls): void;
/**
 * The videos of a room: the local preview, one element per peer in the `remoteVideos`
 * container, and the classic `remoteVideo` element, which shows one peer: the first with a
 * stream, and that peer's newest stream (after a relink) until it leaves or stops sending;
 * then the next peer's stream, or nothing. Never a frozen last frame.
 */
export class VideoWall {
    /**
     * @param {{localVideo?: HTMLVideoElement | string, remoteVideos?: HTMLElement | string, remoteVideo?: HTMLVideoElement | string}} targets
     */
    constructor(targets: {
        localVideo?: HTMLVideoElement | string;
        remoteVideos?: HTMLElement | string;
        remoteVideo?: HTMLVideoElement | string;
    });
    targets: {
        localVideo?: HTMLVideoElement | string;
        remoteVideos?: HTMLElement | string;
        remoteVideo?: HTMLVideoElement | string;
    };
    /** Each peer's current stream, in the order they came.
     * @type {Map<string, MediaStream>} */
    streams: Map<string, MediaStream>;
    /** The peer the classic element shows.
     * @type {string | null} */
    single: string | null;
    /**
     * Shows the local camera (muted), or nothing.
     * @param {MediaStream | null} stream
     * @param {boolean} [refresh]
     */
    showLocal(stream: MediaStream | null, refresh?: boolean): void;
    /**
     * A peer's stream arrived (a first one, or a newer one after a relink). It goes when the
     * peer stops sending (every track removed: a hang-up) or `remove` is called.
     * @param {string} peerId
     * @param {MediaStream} stream
     */
    show(peerId: string, stream: MediaStream): void;
    /**
     * A peer's video goes (it left, or stopped sending).
     * @param {string} peerId
     */
    remove(peerId: string): void;
    /** @param {string | null} peerId */
    showSingle(peerId: string | null): void;
}
/**
 * This peer's own media: the camera and microphone, the screen while it is shared, whether
 * each is on, and the videos the page shows. It changes the tracks of the peer connections it
 * is given; it does not know the room.
 */
export class LocalMedia {
    /**
     * @param {{video?: boolean | MediaTrackConstraints, audio?: boolean | MediaTrackConstraints, localStream?: MediaStream, localVideo?: HTMLVideoElement | string, remoteVideos?: HTMLElement | string, remoteVideo?: HTMLVideoElement | string}} options
     */
    constructor(options: {
        video?: boolean | MediaTrackConstraints;
        audio?: boolean | MediaTrackConstraints;
        localStream?: MediaStream;
        localVideo?: HTMLVideoElement | string;
        remoteVideos?: HTMLElement | string;
        remoteVideo?: HTMLVideoElement | string;
    });
    options: {
        video?: boolean | MediaTrackConstraints;
        audio?: boolean | MediaTrackConstraints;
        localStream?: MediaStream;
        localVideo?: HTMLVideoElement | string;
        remoteVideos?: HTMLElement | string;
        remoteVideo?: HTMLVideoElement | string;
    };
    /** @type {MediaStream | null} */
    local: MediaStream | null;
    /** The tracks this SDK opened (and so stops); the app's own `localStream` it leaves alone.
     * @type {WeakSet<MediaStreamTrack>} */
    owned: WeakSet<MediaStreamTrack>;
    /** Devices chosen with `setCamera` / `setMicrophone`. @type {{audio: string | null, video: string | null}} */
    devices: {
        audio: string | null;
        video: string | null;
    };
    /** Bumped by every camera change, so that a camera opened late is not used. */
    videoTurn: number;
    stopped: boolean;
    /** @type {MediaStreamTrack | null} */
    screenTrack: MediaStreamTrack | null;
    /** @type {MediaStream | null} */
    screenStream: MediaStream | null;
    /** What the page shows: the preview and the peers' videos. */
    videos: VideoWall;
    audioEnabled: boolean;
    videoEnabled: boolean;
    /** Opens the camera and microphone (or takes the app's `localStream`) and shows the preview. */
    open(): Promise<void>;
    /**
     * @param {boolean} on
     * @returns {void}
     */
    setAudio(on: boolean): void;
    /**
     * Turns the camera off (its track is stopped, so the camera's light goes off, and the peers'
     * senders carry nothing, without renegotiation) or on again (a new track from the camera, in
     * the same senders). The app's own `localStream` is only disabled and enabled, never stopped.
     * @param {boolean} on
     * @param {import("./mesh.js").PeerLink[]} links
     */
    setVideo(on: boolean, links: import("./mesh.js").PeerLink[]): Promise<void>;
    /**
     * Switches to another camera or microphone: a new track from that device in the same
     * senders (no renegotiation); the old one is stopped (if this SDK opened it). A camera that
     * is off is only remembered for when it is turned on.
     * @param {"audio" | "video"} kind
     * @param {string} deviceId from `navigator.mediaDevices.enumerateDevices()`
     * @param {import("./mesh.js").PeerLink[]} links
     */
    setDevice(kind: "audio" | "video", deviceId: string, links: import("./mesh.js").PeerLink[]): Promise<void>;
    /**
     * Replaces the camera with the screen on every connection (no renegotiation); when the
     * browser's own "stop sharing" ends it, `onEnded` runs.
     * @param {import("./mesh.js").PeerLink[]} links
     * @param {() => void} onEnded
     */
    shareScreen(links: import("./mesh.js").PeerLink[], onEnded: () => void): Promise<void>;
    /**
     * Goes back to the camera (or to no video, without one).
     * @param {import("./mesh.js").PeerLink[]} links
     */
    stopScreenShare(links: import("./mesh.js").PeerLink[]): Promise<void>;
    /**
     * Classic `callBtn`: opens the call's media and sends it on every connection; false when
     * the room ended meanwhile (the media is stopped again).
     * @param {() => import("./mesh.js").PeerLink[]} links the connections once the media is open
     * @param {() => boolean} ended
     */
    startCall(links: () => import("./mesh.js").PeerLink[], ended: () => boolean): Promise<boolean>;
    /**
     * Classic `callBtn`: hangs up: local media stops, and the other side's video of us ends.
     * @param {import("./mesh.js").PeerLink[]} links
     */
    hangUp(links: import("./mesh.js").PeerLink[]): void;
    /** Stops every track this SDK opened (the room ended). */
    stop(): void;
}
/**
 * What the classic buttons control.
 */
export type CallControls = {
    /**
     * the call's media is on (callBtn)
     */
    inCall: () => boolean;
    startCall: () => Promise<void>;
    hangUp: () => void;
    audioOn: () => boolean;
    videoOn: () => boolean;
    setAudio: (on: boolean) => void;
    setVideo: (on: boolean) => Promise<void>;
    onError: (error: Error) => void;
};
