// @ts-check
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
export function resolveElement(target) {
  if (!target) return null;
  if (typeof target !== "string") return target;
  let found = document.getElementById(target);
  if (!found) {
    try {
      found = document.querySelector(target);
    } catch {
      // Neither an id on the page nor a valid selector.
    }
  }
  return /** @type {T | null} */ (found);
}

/** Whether this browser can open a camera at all (not on an insecure origin, say). */
export function cameraAvailable() {
  return typeof navigator.mediaDevices?.getUserMedia === "function";
}

/**
 * The camera and microphone, as the room's options ask.
 * @param {{video?: boolean | MediaTrackConstraints, audio?: boolean | MediaTrackConstraints}} want
 */
export function openCamera(want) {
  return navigator.mediaDevices.getUserMedia({ video: want.video ?? true, audio: want.audio ?? true });
}

/** The screen (or a window, or a tab: the browser asks the user). */
export function openScreen() {
  return navigator.mediaDevices.getDisplayMedia({ video: true });
}

/**
 * Shows a stream (or nothing) in a video element, playing inline.
 * @param {HTMLVideoElement} video
 * @param {MediaStream | null} stream
 */
function play(video, stream) {
  video.autoplay = true;
  video.playsInline = true;
  if (video.srcObject !== stream) video.srcObject = stream;
}

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
  constructor(targets) {
    this.targets = targets;
    /** Each peer's current stream, in the order they came.
     * @type {Map<string, MediaStream>} */
    this.streams = new Map();
    /** The peer the classic element shows.
     * @type {string | null} */
    this.single = null;
  }

  /**
   * Shows the local camera (muted), or nothing.
   * @param {MediaStream | null} stream
   */
  showLocal(stream) {
    const preview = resolveElement(this.targets.localVideo);
    if (preview instanceof HTMLVideoElement) {
      preview.muted = true;
      play(preview, stream);
    }
  }

  /**
   * A peer's stream arrived (a first one, or a newer one after a relink). It goes when the
   * peer stops sending (every track removed: a hang-up) or `remove` is called.
   * @param {string} peerId
   * @param {MediaStream} stream
   */
  show(peerId, stream) {
    stream.onremovetrack = () => {
      if (stream.getTracks().length === 0 && this.streams.get(peerId) === stream) this.remove(peerId);
    };
    const container = resolveElement(this.targets.remoteVideos);
    if (container) {
      let video = /** @type {HTMLVideoElement | null} */ (container.querySelector(`video[data-peer="${CSS.escape(peerId)}"]`));
      if (!video) {
        video = document.createElement("video");
        video.dataset.peer = peerId;
        container.appendChild(video);
      }
      play(video, stream);
    }
    this.streams.set(peerId, stream);
    const shown = this.single === null ? undefined : this.streams.get(this.single);
    if (!shown || this.single === peerId) this.showSingle(peerId);
  }

  /**
   * A peer's video goes (it left, or stopped sending).
   * @param {string} peerId
   */
  remove(peerId) {
    this.streams.delete(peerId);
    const container = resolveElement(this.targets.remoteVideos);
    container?.querySelector(`video[data-peer="${CSS.escape(peerId)}"]`)?.remove();
    if (this.single === peerId) this.showSingle(this.streams.keys().next().value ?? null);
  }

  /** @param {string | null} peerId */
  showSingle(peerId) {
    this.single = peerId;
    const single = resolveElement(this.targets.remoteVideo);
    if (single instanceof HTMLVideoElement) play(single, peerId === null ? null : this.streams.get(peerId) ?? null);
  }
}

/**
 * What the classic buttons control.
 * @typedef {object} CallControls
 * @property {() => boolean} inCall the call's media is on (callBtn)
 * @property {() => Promise<void>} startCall
 * @property {() => void} hangUp
 * @property {() => boolean} audioOn
 * @property {() => boolean} videoOn
 * @property {(on: boolean) => void} setAudio
 * @property {(on: boolean) => void} setVideo
 * @property {(error: Error) => void} onError
 */

/**
 * Wires the classic buttons: `callBtn` starts the call's media, then hangs up; the mute buttons
 * toggle the microphone and the camera. `aria-pressed` shows each state.
 * @param {{callBtn?: HTMLElement | string, muteAudioBtn?: HTMLElement | string, muteVideoBtn?: HTMLElement | string}} targets
 * @param {CallControls} controls
 */
export function wireButtons(targets, controls) {
  const callBtn = resolveElement(targets.callBtn);
  if (callBtn) {
    const show = () => callBtn.setAttribute("aria-pressed", String(controls.inCall()));
    callBtn.addEventListener("click", () => {
      const done = controls.inCall() ? Promise.resolve(controls.hangUp()) : controls.startCall();
      done.then(show, (err) => controls.onError(err instanceof Error ? err : new Error(String(err))));
    });
    show();
  }
  const audioBtn = resolveElement(targets.muteAudioBtn);
  const videoBtn = resolveElement(targets.muteVideoBtn);
  const reflect = () => {
    audioBtn?.setAttribute("aria-pressed", String(!controls.audioOn()));
    videoBtn?.setAttribute("aria-pressed", String(!controls.videoOn()));
  };
  audioBtn?.addEventListener("click", () => {
    controls.setAudio(!controls.audioOn());
    reflect();
  });
  videoBtn?.addEventListener("click", () => {
    controls.setVideo(!controls.videoOn());
    reflect();
  });
  reflect();
}

/**
 * This peer's own media: the camera and microphone, the screen while it is shared, whether
 * each is on, and the videos the page shows. It changes the tracks of the peer connections it
 * is given; it does not know the room.
 */
export class LocalMedia {
  /**
   * @param {{video?: boolean | MediaTrackConstraints, audio?: boolean | MediaTrackConstraints, localVideo?: HTMLVideoElement | string, remoteVideos?: HTMLElement | string, remoteVideo?: HTMLVideoElement | string}} options
   */
  constructor(options) {
    this.options = options;
    /** @type {MediaStream | null} */
    this.local = null;
    /** @type {MediaStreamTrack | null} */
    this.screenTrack = null;
    /** @type {MediaStream | null} */
    this.screenStream = null;
    /** What the page shows: the preview and the peers' videos. */
    this.videos = new VideoWall(options);
    this.audioEnabled = options.audio !== false;
    this.videoEnabled = options.video !== false;
  }

  /** Opens the camera and microphone and shows the preview. */
  async open() {
    this.local = await openCamera(this.options);
    this.videos.showLocal(this.local);
  }

  /**
   * @param {boolean} on
   * @returns {void}
   */
  setAudio(on) {
    this.audioEnabled = on;
    for (const t of this.local?.getAudioTracks() ?? []) t.enabled = on;
  }

  /** @param {boolean} on */
  setVideo(on) {
    this.videoEnabled = on;
    for (const t of this.local?.getVideoTracks() ?? []) t.enabled = on;
  }

  /**
   * Replaces the camera with the screen on every connection (no renegotiation); when the
   * browser's own "stop sharing" ends it, `onEnded` runs.
   * @param {import("./mesh.js").PeerLink[]} links
   * @param {() => void} onEnded
   */
  async shareScreen(links, onEnded) {
    const screen = await openScreen();
    const track = screen.getVideoTracks()[0];
    this.screenStream = screen;
    this.screenTrack = track;
    track.onended = onEnded;
    // In place of the camera, or (no camera) as a new track; peers that connect or reconnect
    // during the share get it too (peers.js `link`).
    await Promise.all(links.map((link) => link.setTrack(track, screen)));
  }

  /**
   * Goes back to the camera (or to no video, without one).
   * @param {import("./mesh.js").PeerLink[]} links
   */
  async stopScreenShare(links) {
    if (!this.screenTrack) return;
    this.screenTrack.stop();
    this.screenTrack = null;
    this.screenStream = null;
    const camera = this.local?.getVideoTracks()[0] ?? null;
    await Promise.all(links.map((link) => {
      if (camera && this.local) return link.setTrack(camera, this.local);
      link.removeTrack("video");
      return undefined;
    }));
  }

  /**
   * Classic `callBtn`: opens the call's media and sends it on every connection; false when
   * the room ended meanwhile (the media is stopped again).
   * @param {() => import("./mesh.js").PeerLink[]} links the connections once the media is open
   * @param {() => boolean} ended
   */
  async startCall(links, ended) {
    const local = await openCamera(this.options);
    if (ended()) {
      for (const t of local.getTracks()) t.stop();
      return false;
    }
    this.local = local;
    this.videos.showLocal(local);
    for (const link of links()) {
      for (const track of local.getTracks()) {
        if (track.kind === "video" && this.screenTrack) continue;
        void link.setTrack(track, local);
      }
    }
    return true;
  }

  /**
   * Classic `callBtn`: hangs up: local media stops, and the other side's video of us ends.
   * @param {import("./mesh.js").PeerLink[]} links
   */
  hangUp(links) {
    const local = this.local;
    if (!local) return;
    this.local = null;
    for (const link of links) {
      link.removeTrack("audio");
      if (!this.screenTrack) link.removeTrack("video");
    }
    for (const t of local.getTracks()) t.stop();
    this.videos.showLocal(null);
  }

  /** Stops every track (the room ended). */
  stop() {
    for (const t of this.local?.getTracks() ?? []) t.stop();
    this.screenTrack?.stop();
  }
}
