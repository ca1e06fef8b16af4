// @ts-check
/**
 * Media and the page: the camera and the screen, and the elements a room draws into (the local
 * preview, one video per peer in `remoteVideos`, the classic one-to-one `remoteVideo`) and
 * listens to (the classic buttons). No connection state: bluecam.js says what to show, this
 * module shows it.
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
