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

/**
 * Constraints for one kind, from the room's option (`true` or constraints) and a device chosen
 * since (`setCamera`, `setMicrophone`).
 * @param {boolean | MediaTrackConstraints | undefined} option
 * @param {string | null} deviceId
 * @returns {MediaTrackConstraints | boolean}
 */
function constraints(option, deviceId) {
  const base = typeof option === "object" ? option : {};
  return deviceId ? { ...base, deviceId: { exact: deviceId } } : (typeof option === "object" ? option : true);
}

/**
 * One new track of `kind` from a device.
 * @param {"audio" | "video"} kind
 * @param {MediaTrackConstraints | boolean} want
 * @returns {Promise<MediaStreamTrack>}
 */
async function openTrack(kind, want) {
  const stream = await navigator.mediaDevices.getUserMedia({ [kind]: want });
  const [track] = kind === "audio" ? stream.getAudioTracks() : stream.getVideoTracks();
  if (!track) throw new DOMException(`no ${kind} track`, "NotFoundError");
  return track;
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
   * @param {boolean} [refresh]
   */
  showLocal(stream, refresh = false) {
    const preview = resolveElement(this.targets.localVideo);
    if (preview instanceof HTMLVideoElement) {
      preview.muted = true;
      // (The same stream with another track: shown again, so the element picks it up.)
      if (refresh) preview.srcObject = null;
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
 * @property {(on: boolean) => Promise<void>} setVideo
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
    controls.setVideo(!controls.videoOn()).catch((err) => controls.onError(err instanceof Error ? err : new Error(String(err))));
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
   * @param {{video?: boolean | MediaTrackConstraints, audio?: boolean | MediaTrackConstraints, localStream?: MediaStream, localVideo?: HTMLVideoElement | string, remoteVideos?: HTMLElement | string, remoteVideo?: HTMLVideoElement | string}} options
   */
  constructor(options) {
    this.options = options;
    /** @type {MediaStream | null} */
    this.local = null;
    /** The tracks this SDK opened (and so stops); the app's own `localStream` it leaves alone.
     * @type {WeakSet<MediaStreamTrack>} */
    this.owned = new WeakSet();
    /** Devices chosen with `setCamera` / `setMicrophone`. @type {{audio: string | null, video: string | null}} */
    this.devices = { audio: null, video: null };
    /** Bumped by every camera change, so that a camera opened late is not used. */
    this.videoTurn = 0;
    this.stopped = false;
    /** @type {MediaStreamTrack | null} */
    this.screenTrack = null;
    /** @type {MediaStream | null} */
    this.screenStream = null;
    /** What the page shows: the preview and the peers' videos. */
    this.videos = new VideoWall(options);
    this.audioEnabled = options.audio !== false;
    this.videoEnabled = options.video !== false;
  }

  /** Opens the camera and microphone (or takes the app's `localStream`) and shows the preview. */
  async open() {
    if (this.options.localStream) {
      this.local = this.options.localStream;
    } else {
      this.local = await openCamera(this.options);
      for (const t of this.local.getTracks()) this.owned.add(t);
    }
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

  /**
   * Turns the camera off (its track is stopped, so the camera's light goes off, and the peers'
   * senders carry nothing, without renegotiation) or on again (a new track from the camera, in
   * the same senders). The app's own `localStream` is only disabled and enabled, never stopped.
   * @param {boolean} on
   * @param {import("./mesh.js").PeerLink[]} links
   */
  async setVideo(on, links) {
    this.videoEnabled = on;
    const turn = ++this.videoTurn;
    const local = this.local;
    if (!local) return;
    const tracks = local.getVideoTracks();
    if (tracks.some((t) => !this.owned.has(t))) {
      for (const t of tracks) t.enabled = on;
      return;
    }
    if (!on) {
      for (const t of tracks) {
        t.stop();
        local.removeTrack(t);
      }
      if (!this.screenTrack) for (const link of links) void link.setTrack(null, local, "video");
      this.videos.showLocal(local, true);
      return;
    }
    if (tracks.length > 0) return;
    const track = await openTrack("video", constraints(this.options.video, this.devices.video));
    // Turned off again, or the room ended, while the camera opened.
    if (turn !== this.videoTurn || this.stopped || this.local !== local) {
      track.stop();
      return;
    }
    this.owned.add(track);
    local.addTrack(track);
    this.videos.showLocal(local, true);
    if (!this.screenTrack) await Promise.all(links.map((link) => link.setTrack(track, local)));
  }

  /**
   * Switches to another camera or microphone: a new track from that device in the same
   * senders (no renegotiation); the old one is stopped (if this SDK opened it). A camera that
   * is off is only remembered for when it is turned on.
   * @param {"audio" | "video"} kind
   * @param {string} deviceId from `navigator.mediaDevices.enumerateDevices()`
   * @param {import("./mesh.js").PeerLink[]} links
   */
  async setDevice(kind, deviceId, links) {
    this.devices[kind] = deviceId;
    const local = this.local;
    if (!local) return;
    const old = kind === "audio" ? local.getAudioTracks() : local.getVideoTracks();
    if (kind === "video" && old.length === 0) return;
    const turn = kind === "video" ? ++this.videoTurn : 0;
    const track = await openTrack(kind, constraints(this.options[kind], deviceId));
    if ((kind === "video" && turn !== this.videoTurn) || this.stopped || this.local !== local) {
      track.stop();
      return;
    }
    this.owned.add(track);
    if (kind === "audio") track.enabled = this.audioEnabled;
    for (const t of old) {
      if (this.owned.has(t)) t.stop();
      local.removeTrack(t);
    }
    local.addTrack(track);
    if (kind === "video") this.videos.showLocal(local, true);
    if (kind === "audio" || !this.screenTrack) await Promise.all(links.map((link) => link.setTrack(track, local)));
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
    for (const t of local.getTracks()) this.owned.add(t);
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
    for (const t of local.getTracks()) if (this.owned.has(t)) t.stop();
    this.videos.showLocal(null);
  }

  /** Stops every track this SDK opened (the room ended). */
  stop() {
    this.stopped = true;
    for (const t of this.local?.getTracks() ?? []) if (this.owned.has(t)) t.stop();
    this.screenTrack?.stop();
  }
}
