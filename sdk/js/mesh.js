// @ts-check
/**
 * One RTCPeerConnection per remote peer (full mesh), negotiated with the "perfect
 * negotiation" pattern so simultaneous offers never deadlock, with a pre-negotiated reliable
 * ordered data channel (id 0) and an ICE restart when the network path changes: ICE failed,
 * disconnected for DISCONNECTED_RESTART_MS, or the browser came back online (the room calls
 * `restartIce`).
 *
 * Data first, media right after: the first offer and answer carry the data channel alone, and
 * each side says which kinds of media it will send (`sends`). As soon as the answer is in, the
 * side that made the first offer makes a second offer with its tracks and a receive-only slot
 * for every kind the other side sends (while ICE and DTLS connect), and sends it over the data
 * channel the moment that opens; the answer comes back the same way (peer to peer: not two more
 * trips through a server that may be far away). The other side puts its own tracks into those
 * slots before it answers. From then on both sides' descriptions go over the channel while it
 * is up (`channelUsable`), so none overtakes another on the other path; ICE restarts and their
 * candidates go through the server. Two exchanges instead of one, but the data channel
 * no longer waits for the audio and video engines to be set up (most of a first exchange with
 * media; see docs/sdk.md). A side that is not told of slots for its tracks, by the time its
 * data channel opens, offers them itself.
 */

/**
 * @typedef {object} LinkHandlers
 * @property {(data: unknown) => void} signal send signaling data to the remote peer (via the server)
 * @property {(text: string) => void} onData a data channel message
 * @property {(open: boolean) => void} onChannel the data channel opened or closed
 * @property {(stream: MediaStream) => void} onStream a remote stream arrived
 */

/** Negotiation steps kept per connection for debugging. */
const TRACE_MAX = 32;
/** How long the polite side waits for the first offer before making one itself. */
const FIRST_OFFER_WAIT_MS = 3000;
/** ICE "disconnected" this long (a lost path, a changed network): restart it rather than wait
 * for "failed", which takes about 30 s. A blip shorter than this recovers on its own. */
const DISCONNECTED_RESTART_MS = 3000;

/** How long the media offer waits for the data channel before going through the server. */
const CHANNEL_OFFER_WAIT_MS = 3000;
/** How a signal sent over the data channel starts (app data there is envelopes, `{"v":…`). */
const CHANNEL_SIGNAL = '{"sig":';

/** Whether this browser can do WebRTC at all. */
export function webrtcAvailable() {
  return typeof globalThis.RTCPeerConnection === "function";
}

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
  constructor(polite, rtcConfig, local, handlers, receiveMedia = true, pair = null) {
    this.polite = polite;
    this.pair = pair;
    /** Whether this side takes the other's media (a token's `subscribeMedia`). */
    this.receiveMedia = receiveMedia;
    /** This connection's generation: every signal it sends carries it. */
    this.gen = Math.random().toString(36).slice(2, 10);
    /** @type {string | undefined} the remote connection this one negotiates with */
    this.remoteGen = undefined;
    this.handlers = handlers;
    /** @param {Record<string, unknown>} data */
    this.signal = (data) => handlers.signal({ ...data, gen: this.gen, to: this.remoteGen });
    this.makingOffer = false;
    this.ignoreOffer = false;
    /** Signals are applied one after the other, in the order they came (a poll of the HTTP
     * transport hands over an offer and its candidates in one go). */
    this.signals = Promise.resolve();
    /** @type {RTCIceCandidateInit[]} candidates that came before any remote description */
    this.earlyCandidates = [];
    /** @type {string[]} what happened, for debugging negotiation */
    this.trace = [];
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.firstOfferTimer = undefined;
    this.closed = false;
    this.pc = new RTCPeerConnection(rtcConfig);
    /** @type {Map<string, RTCRtpSender>} kind → sender, for replaceTrack */
    this.senders = new Map();
    /** Tracks held back until the first exchange is done (data first), by kind.
     * @type {Map<string, {track: MediaStreamTrack, stream: MediaStream}>} */
    this.pending = new Map();
    /** Whether tracks are still held back (`pending`) rather than sent. */
    this.held = true;
    for (const track of local?.getTracks() ?? []) this.pending.set(track.kind, { track, stream: /** @type {MediaStream} */ (local) });
    /** Whether the first offer and answer are done, and whether this side made that offer. */
    this.exchanged = false;
    this.firstOfferer = false;
    /** The kinds of media the remote side said it sends in its first description; undefined
     * when it said nothing (an SDK that sends its tracks in the first offer). @type {string[] | undefined} */
    this.remoteSends = undefined;
    /** The kinds this side said it sends. @type {string[]} */
    this.announced = [];
    this.dc = this.pc.createDataChannel("bluecam", { negotiated: true, id: 0, ordered: true });
    this.dc.onopen = () => {
      handlers.onChannel(true);
      this.startMedia();
    };
    this.dc.onclose = () => handlers.onChannel(false);
    /** Whether the next offer goes over the data channel (the media offer, see above). */
    this.offerOverChannel = false;
    /** Offers made so far (which one is still the one waiting to be answered). */
    this.offers = 0;
    /** An ICE restart waits for the next offer (which then goes through the server). */
    this.restarting = false;
    this.dc.onmessage = (ev) => {
      if (typeof ev.data !== "string") return;
      const pair = this.pair;
      if (!pair) {
        this.onChannelText(ev.data);
        return;
      }
      let rec;
      try {
        rec = JSON.parse(ev.data);
      } catch {
        rec = null;
      }
      if (typeof rec?.x !== "string") {
        pair.room.rejected++;
        return;
      }
      void pair.open("channel", rec.x, (text) => {
        if (!this.closed) this.onChannelText(text);
      });
    };
    // Perfect negotiation, plus one rule that keeps the first exchange free of glare: the
    // polite side lets the impolite side make the first offer (both would otherwise offer at
    // once, and Chromium's implicit rollback while an offer is still being made can leave both
    // sides stable with ICE never started). It offers itself only if none came in time.
    this.gotOffer = false;
    this.pc.onnegotiationneeded = () => {
      this.note("negotiationneeded " + this.pc.signalingState);
      if (this.polite && !this.gotOffer && !this.exchanged) return;
      void this.makeOffer();
    };
    if (polite) {
      this.firstOfferTimer = setTimeout(() => {
        if (!this.gotOffer && !this.closed && this.pc.signalingState === "stable") void this.makeOffer();
      }, FIRST_OFFER_WAIT_MS);
    }
    this.pc.onicecandidate = ({ candidate }) => {
      if (candidate) this.signal({ candidate });
    };
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.disconnectedTimer = undefined;
    /** ICE restarts so far (for tests and debugging). */
    this.iceRestarts = 0;
    this.pc.oniceconnectionstatechange = () => {
      const state = this.pc.iceConnectionState;
      clearTimeout(this.disconnectedTimer);
      if (state === "failed") this.restartIce("failed");
      else if (state === "disconnected") {
        this.disconnectedTimer = setTimeout(() => {
          if (this.pc.iceConnectionState === "disconnected") this.restartIce("disconnected");
        }, DISCONNECTED_RESTART_MS);
      }
    };
    this.pc.ontrack = ({ streams, track }) => {
      if (this.receiveMedia) handlers.onStream(streams[0] ?? new MediaStream([track]));
    };
  }

  /**
   * A data channel message (opened, when the room is encrypted): a signal, or app data.
   * @param {string} text
   */
  onChannelText(text) {
    if (text.startsWith(CHANNEL_SIGNAL)) {
      try {
        this.enqueueSignal(JSON.parse(text).sig, true);
      } catch {
        // Not ours to read: ignored, as a malformed envelope would be.
      }
      return;
    }
    this.handlers.onData(text);
  }

  /**
   * Puts a message on the data channel, sealed first when the room is encrypted (in order; one
   * sealed while the channel closed is lost with it, as unsent messages are: the send loop
   * retransmits over the relay).
   * @param {string} text
   */
  channelSend(text) {
    if (!this.pair) {
      this.dc.send(text);
      return;
    }
    void this.pair.seal("channel", text, (rec) => {
      try {
        if (this.open) this.dc.send(JSON.stringify(rec));
      } catch {
        // Closed meanwhile.
      }
    });
  }

  /**
   * Records a negotiation step (the last few, for debugging a connection that never opens).
   * @param {string} what
   */
  note(what) {
    this.trace.push(what);
    if (this.trace.length > TRACE_MAX) this.trace.shift();
  }

  /** What a description signal carries: the description, and in the first exchange the kinds
   * of media this side will send once the data channel is open. */
  describe() {
    if (this.exchanged) return { description: this.pc.localDescription };
    this.announced = [...new Set([...this.pending.keys(), ...this.senders.keys()])];
    return { description: this.pc.localDescription, sends: this.announced };
  }

  /**
   * Sends the held-back tracks (into the receive slots the remote offer made, when called
   * between its offer and our answer; as new tracks otherwise, which renegotiates).
   */
  release() {
    if (!this.held || this.closed) return;
    this.held = false;
    // (No sender exists while tracks are held: `setTrack` keeps them in `pending` then.)
    for (const [kind, { track, stream }] of this.pending) this.senders.set(kind, this.pc.addTrack(track, stream));
    this.pending.clear();
    this.sendOnly();
  }

  /**
   * Whether our offers go over the data channel: the peer reads signals there (it said
   * `sends`) and the channel is open and ICE connected; not an offer with an ICE restart (its
   * new candidates go through the server and must not arrive before it). Once descriptions go
   * over the channel, every one of a side's goes the same way while the link is up, so that one
   * never overtakes another (perfect negotiation needs them in order); answers go the way their
   * offer came.
   */
  channelUsable() {
    const ice = this.pc.iceConnectionState;
    return this.remoteSends !== undefined && this.open && (ice === "connected" || ice === "completed");
  }

  /**
   * Sends a description over the data channel, or through the server when the channel is not
   * open (it closed meanwhile: the relink that follows starts over anyway).
   * @param {Record<string, unknown>} data
   * @param {boolean} overChannel
   */
  sendDescription(data, overChannel) {
    if (overChannel && this.open) {
      try {
        this.channelSend(`${CHANNEL_SIGNAL}${JSON.stringify(data)}}`);
        return;
      } catch {
        // Closed just now: through the server.
      }
    }
    this.signal(data);
  }

  /**
   * Sends our offer over the data channel once it opens, or through the server if it has not
   * within CHANNEL_OFFER_WAIT_MS (ICE still checking, or failing: an ICE restart needs this
   * offer answered first). Not if the offer was rolled back or replaced meanwhile.
   * @param {Record<string, unknown>} data
   */
  sendOfferOverChannel(data) {
    // (Not the description's text: it grows as candidates are gathered.)
    const offer = this.offers;
    const send = (/** @type {boolean} */ overChannel) => {
      clearTimeout(timer);
      this.dc.removeEventListener("open", onOpen);
      if (this.closed || this.pc.signalingState !== "have-local-offer" || this.offers !== offer) return;
      this.sendDescription(data, overChannel);
    };
    const onOpen = () => send(true);
    const timer = setTimeout(() => send(false), CHANNEL_OFFER_WAIT_MS);
    if (this.open) send(true);
    else this.dc.addEventListener("open", onOpen);
  }

  /** The first exchange is done (or, on the other side, the data channel is open): media
   * follows (the module's comment). */
  startMedia() {
    if (!this.held || this.closed) return;
    if (this.firstOfferer) {
      this.release();
      // A slot for every kind the other side sends and this one does not, so that one offer
      // carries both sides' media.
      for (const kind of this.receiveMedia ? this.remoteSends ?? [] : []) {
        if ((kind === "audio" || kind === "video") && !this.senders.has(kind)) {
          this.pc.addTransceiver(kind, { direction: "recvonly" });
        }
      }
      // The offer this makes (if any media is to flow) goes over the channel, to a peer that
      // said `sends` (it reads signals there too).
      this.offerOverChannel = this.remoteSends !== undefined && this.pc.getTransceivers().length > 0;
    } else if (this.remoteSends === undefined || this.announced.length === 0 ||
      [...this.pending.keys()].some((kind) => !this.announced.includes(kind))) {
      // The offering side will not make slots for these tracks (it does not read `sends`, or
      // was told of none, or they came later): send them ourselves.
      this.release();
    }
    // Otherwise the offering side's next offer has slots for our tracks (handleSignal).
  }

  async makeOffer() {
    try {
      this.makingOffer = true;
      // (A restart asked for during this offer's making is the next offer's.)
      const restart = this.restarting;
      this.restarting = false;
      this.sendOnly();
      await this.pc.setLocalDescription();
      this.offers++;
      const waitForChannel = this.offerOverChannel && !restart;
      this.offerOverChannel = false;
      if (waitForChannel) this.sendOfferOverChannel(this.describe());
      else this.sendDescription(this.describe(), !restart && this.channelUsable());
    } catch (err) {
      console.warn("bluecam: negotiation failed", err);
    } finally {
      this.makingOffer = false;
    }
  }

  /** Whether the data channel can carry messages now. */
  get open() {
    return !this.closed && this.dc.readyState === "open";
  }

  /**
   * Sends a data channel message; false when the channel is not open or is backed up.
   * @param {string} text
   */
  send(text) {
    if (!this.open || this.dc.bufferedAmount > 4 * 1024 * 1024) return false;
    try {
      this.channelSend(text);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Queues signaling data from the remote peer, applied after what came before it.
   * @param {any} data
   * @param {boolean} [overChannel] it came over the data channel (an offer is answered there)
   */
  enqueueSignal(data, overChannel = false) {
    this.signals = this.signals.then(() => this.handleSignal(data, overChannel));
  }

  /**
   * Applies signaling data from the remote peer (perfect negotiation).
   * @param {any} data
   * @param {boolean} [overChannel] it came over the data channel (an offer is answered there)
   */
  async handleSignal(data, overChannel = false) {
    if (this.closed) return;
    const pc = this.pc;
    try {
      if (data.description) {
        const description = data.description;
        if (description.type === "offer") this.gotOffer = true;
        this.note(`recv ${description.type} in ${pc.signalingState} making=${this.makingOffer}`);
        const collision = description.type === "offer" && (this.makingOffer || pc.signalingState !== "stable");
        this.ignoreOffer = !this.polite && collision;
        if (this.ignoreOffer) {
          this.note("ignored offer");
          return;
        }
        if (!this.exchanged) {
          this.remoteSends = Array.isArray(data.sends) ? data.sends.map(String) : undefined;
          // Our first offer answered: the first exchange is done, and media is ours to offer.
          if (description.type === "answer") this.exchanged = this.firstOfferer = true;
        }
        await pc.setRemoteDescription(description);
        if (description.type === "answer" && this.firstOfferer) this.startMedia();
        // Candidates that came first (a resume's replay, a relink) apply now.
        for (const candidate of this.earlyCandidates.splice(0)) {
          await pc.addIceCandidate(candidate).catch((err) => this.note(`early candidate: ${err}`));
        }
        if (description.type === "offer") {
          // An offer with media has slots for ours: our held-back tracks go into them, and
          // this answer sends them.
          if (this.held && /^m=(audio|video) /m.test(description.sdp ?? "")) this.release();
          this.sendOnly();
          await pc.setLocalDescription();
          // An offer that came over the data channel is answered there.
          this.sendDescription(this.describe(), overChannel);
          this.exchanged = true;
        }
      } else if (data.candidate) {
        if (!pc.remoteDescription) {
          this.earlyCandidates.push(data.candidate);
          return;
        }
        try {
          await pc.addIceCandidate(data.candidate);
        } catch (err) {
          if (!this.ignoreOffer) throw err;
        }
      }
    } catch (err) {
      console.warn("bluecam: signaling error", err);
    }
  }

  /**
   * Sends `track` as this connection's track of its kind: in place of the one sent now (no
   * renegotiation), or as a new track (renegotiated) when none of that kind is sent. `null`
   * sends nothing of `kind` in its place (a camera turned off), without renegotiation.
   * @param {MediaStreamTrack | null} track
   * @param {MediaStream} stream
   * @param {string} [kind]
   */
  async setTrack(track, stream, kind = track?.kind ?? "") {
    if (this.closed) return;
    if (this.held) {
      if (track) this.pending.set(kind, { track, stream });
      else this.pending.delete(kind);
      return;
    }
    const sender = this.senders.get(kind);
    if (sender) await sender.replaceTrack(track);
    else if (track) {
      this.senders.set(kind, this.pc.addTrack(track, stream));
      this.sendOnly();
    }
  }

  /**
   * Without `receiveMedia`, every media slot only sends (or, with nothing to send, is
   * inactive), so that the other side sends nothing: set before each offer and answer.
   */
  sendOnly() {
    if (this.receiveMedia) return;
    for (const t of this.pc.getTransceivers()) {
      if (t.currentDirection === "stopped" || t.direction === "stopped") continue;
      const want = t.sender.track || [...this.senders.values()].includes(t.sender) ? "sendonly" : "inactive";
      if (t.direction !== want) t.direction = want;
    }
  }

  /**
   * Stops sending any track of `kind` (renegotiated: the other side's track ends).
   * @param {string} kind
   */
  removeTrack(kind) {
    if (this.held) this.pending.delete(kind);
    const sender = this.senders.get(kind);
    if (!sender || this.closed) return;
    this.senders.delete(kind);
    this.pc.removeTrack(sender);
  }

  /**
   * Gathers new candidates and renegotiates them (new ICE credentials, same tracks and data
   * channel): media and data come back on the new path without leaving the room.
   * @param {string} why
   */
  restartIce(why) {
    if (this.closed) return;
    this.iceRestarts++;
    this.restarting = true;
    this.note(`ice restart (${why})`);
    this.pc.restartIce();
  }

  close() {
    this.closed = true;
    clearTimeout(this.firstOfferTimer);
    clearTimeout(this.disconnectedTimer);
    try {
      this.dc.close();
    } catch {
      /* already closed */
    }
    this.pc.close();
  }
}
