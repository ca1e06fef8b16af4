// @ts-check
// Model-based property tests of the delivery promise (docs/sdk.md "Delivery", docs/protocol.md
// §15): every message reaches its recipient exactly once and in order, or its sender is told
// (the sendMessage promise rejects). Two real Rooms (bluecam.js, with delivery.js's Outbox and
// Inbox underneath, their retransmission ticks, ack timers and path choice) talk through a
// simulated network that the test controls step by step:
//
//   - envelopes and acks on the relay and on the data channel can be delivered in any order,
//     dropped or duplicated (the adversary is stronger than a real relay or SCTP channel);
//   - the data channel opens (p2p) and closes (back to the relay), and can be jammed (send
//     refused, as when its buffer is full);
//   - either WebSocket goes down (frames for it are kept, as the server does for a detached peer)
//     and resumes (Room.onResumed); the server refuses a relay frame as `rate_limited`;
//   - time passes (node:test mock timers drive setTimeout, setInterval and Date, so the 250 ms
//     retransmission tick, the 10 ms ack delay and the 1 s relink run as in a browser);
//   - depending on the property, either side reloads (a fresh Room: all its Outbox and Inbox
//     state is lost) and comes back as a new peer id (what the server does) or with the SAME
//     peer id, and the other side is told (peer_left, peer_joined) or not.
//
// After EVERY step the safety half of the invariant is checked; after the steps the network is
// healed and quiesced (sockets resumed, every packet delivered, 5 simulated minutes of timers)
// and the liveness half is checked:
//   safety:   each incarnation (Room) of a recipient gets each message at most once, from each
//             sender id in the order sent, with the data sent, and only messages addressed to
//             its peer id; a message whose promise resolved was delivered to an incarnation of
//             its recipient (never acknowledged-as-delivered yet missing: a silent loss);
//   liveness: once quiesced, every message's promise has settled (resolved or rejected: told).
//
// Every property runs RUNS cases (FC_RUNS overrides); a failure prints fast-check's seed, path
// and shrunk step list, and the error message has the trace of that run. Replay with FC_SEED
// (and FC_PATH for the shrunk case).
import { test, mock } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { Room } from "./bluecam.js";
import { CHUNK_CHARS } from "./delivery.js";

const RUNS = process.env.FC_RUNS ? Number(process.env.FC_RUNS) : 1000;
const TIMEOUT = { timeout: 60_000 };
/** @type {import("fast-check").Parameters<any>} */
const PARAMS = {
  numRuns: RUNS,
  includeErrorInReport: true,
  ...(process.env.FC_SEED ? { seed: Number(process.env.FC_SEED) } : {}),
  ...(process.env.FC_PATH ? { path: process.env.FC_PATH } : {}),
};
/** The send loop's retransmission tick (scheduler.js TICK_MS); the test starts it itself. */
const TICK_MS = 250;
/** Simulated time at the start of a run (not 0: a sentAt of 0 means "not sent"). */
const T0 = 1_700_000_000_000;
/** Quiescing: rounds of "deliver everything, then one simulated second". */
const QUIESCE_ROUNDS = 300;
const LOG_LINES = 80;

/** @typedef {"A" | "B"} Side */
/** @type {Side[]} */
const SIDES = ["A", "B"];
const other = (/** @type {Side} */ s) => (s === "A" ? "B" : "A");
const settle = () => new Promise((resolve) => setImmediate(resolve));

/**
 * One incarnation of a side: one Room, from its join to its reload.
 * @typedef {object} Inc
 * @property {Side} side
 * @property {string} id its peer id
 * @property {string} name e.g. "B#2" (side, incarnation)
 * @property {Room} room
 * @property {boolean} alive
 * @property {boolean} socketUp
 * @property {{n: number, from: string, path: string}[]} delivered what its app got, in order
 * @property {{from: string, expected: number, held: number, partial: number}[]} gaps onGap calls
 *
 * A sent message (one recipient).
 * @typedef {object} Msg
 * @property {number} n global number, in send order (also in its data)
 * @property {string} from sender's peer id
 * @property {string} fromName sender's incarnation
 * @property {string} to recipient's peer id
 * @property {unknown} data
 * @property {"pending" | "resolved" | "rejected"} status
 *
 * A packet in flight.
 * @typedef {object} Packet
 * @property {"relay" | "p2p"} path
 * @property {number} gen the data channel generation (p2p)
 * @property {string} from sender's peer id
 * @property {string} to recipient's peer id
 * @property {string} text the JSON text (relay: of `msg`; p2p: of one envelope)
 *
 * A stand-in for mesh.js's PeerLink: a data channel that the model opens and closes.
 * @typedef {object} FakeLink
 * @property {number} gen 0: a connection attempt that has not opened (yet)
 * @property {boolean} closed
 * @property {Inc} owner
 * @property {any} remote the Room's Remote this link belongs to
 * @property {boolean} open
 * @property {{bufferedAmount: number, close: () => void}} dc
 * @property {(text: string) => boolean} send
 * @property {() => void} close
 *
 * @typedef {{k: string, [key: string]: any}} Step
 */

/** Short description of a packet's envelopes, for the trace. */
function describe(/** @type {string} */ text) {
  const v = JSON.parse(text);
  return (Array.isArray(v) ? v : [v]).map((e) => {
    if (e.k === "a") return `ack ${e.a}`;
    if (e.k === "m") return `s${e.s}=m${e.d?.n}`;
    return `s${e.s}.chunk${e.i}/${e.n}`;
  }).join(" ");
}

class World {
  /**
   * @param {{reload: "none" | "newId" | "sameId"}} cfg
   */
  constructor(cfg) {
    this.cfg = cfg;
    /** @type {Inc[]} */
    this.incs = [];
    /** @type {Record<Side, Inc>} */
    this.current = /** @type {any} */ ({});
    /** @type {Packet[]} */
    this.inflight = [];
    /** Control frames the server has for an incarnation, in order (peer_left, peer_joined).
     * @type {{to: Inc, frame: any}[]} */
    this.notices = [];
    this.channel = { gen: 0, open: false };
    this.gens = 0;
    this.jammed = false;
    /** @type {FakeLink[]} */
    this.links = [];
    /** Data channel close events, run after the code that caused them (as dc.onclose would).
     * @type {(() => void)[]} */
    this.events = [];
    /** @type {Msg[]} */
    this.msgs = [];
    this.newIds = 0;
    /** @type {Record<Side, number>} */
    this.incCount = { A: 0, B: 0 };
    /** @type {string[]} */
    this.log = [];
    mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: T0 });
    const a = this.spawn("A", "A");
    const b = this.spawn("B", "B");
    a.room.onFrame({ op: "peer_joined", peer: { id: b.id, identity: "B" } });
  }

  /** @param {string} line */
  note(line) {
    this.log.push(`[t+${Date.now() - T0}ms] ${line}`);
  }

  /**
   * A new Room for a side; it joins and finds the other side's current incarnation (if any).
   * @param {Side} side
   * @param {string} id
   */
  spawn(side, id) {
    const n = ++this.incCount[side];
    /** @type {Inc} */
    const inc = /** @type {any} */ ({ side, id, name: `${side}#${n}`, alive: true, socketUp: true, delivered: [], gaps: [] });
    const room = new Room({
      token: "t", server: "http://127.0.0.1:9", video: false, audio: false,
      ...(this.cfg.deliveryTimeoutMs ? { deliveryTimeoutMs: this.cfg.deliveryTimeoutMs } : {}),
      onMessage: (type, data, from, meta) => this.onMessage(inc, type, data, from.id, meta.path),
      onGap: (peer, gap) => {
        inc.gaps.push({ from: peer.id, ...gap });
        this.note(`${inc.name} onGap from ${peer.id}: ${JSON.stringify(gap)}`);
      },
      onError: (err) => this.note(`${inc.name} onError ${err.message}`),
    });
    // (A room made here, not by joinRoom: its events go out as they happen.)
    room.events.flush();
    inc.room = room;
    room.self = { id, identity: side };
    // The WebSocket: joined, and its frames go into the model's network.
    room.signaling.connected = true;
    room.signaling.send = (frame) => this.relaySend(inc, frame);
    // WebRTC: the model opens data channels itself; a relink makes a link that is not open.
    room.roster.link = (remote) => {
      remote.link?.close();
      remote.link = /** @type {any} */ (this.makeLink(inc, remote, 0));
    };
    room.scheduler.ticker = setInterval(() => room.scheduler.tick(), TICK_MS);
    this.incs.push(inc);
    this.current[side] = inc;
    const peer = this.current[other(side)];
    if (peer?.alive) room.roster.add({ id: peer.id, identity: peer.side }, false);
    this.note(`${inc.name} joins as ${id}` + (peer?.alive ? ` and sees ${peer.id}` : ""));
    return inc;
  }

  /**
   * @param {Inc} inc
   * @param {any} remote
   * @param {number} gen
   * @returns {FakeLink}
   */
  makeLink(inc, remote, gen) {
    const world = this;
    /** @type {FakeLink} */
    const link = {
      gen, closed: false, owner: inc, remote,
      get open() {
        return !this.closed && this.gen > 0 && world.channel.open && world.channel.gen === this.gen;
      },
      dc: {
        get bufferedAmount() { return world.jammed && link.open ? 5 << 20 : 0; },
        close() { link.close(); },
      },
      send(text) {
        if (!this.open || world.jammed) return false;
        world.inflight.push({ path: "p2p", gen, from: inc.id, to: remote.info.id, text });
        return true;
      },
      close() {
        if (this.closed) return;
        const wasOpen = this.open;
        this.closed = true;
        if (wasOpen) world.closeChannel(`${inc.name} closed its connection`);
      },
    };
    this.links.push(link);
    return link;
  }

  /** The data channel ends: both sides see it close; what was in flight on it is lost. */
  closeChannel(/** @type {string} */ why) {
    if (!this.channel.open) return;
    const gen = this.channel.gen;
    this.channel.open = false;
    const lost = this.inflight.filter((p) => p.path === "p2p" && p.gen === gen).length;
    this.inflight = this.inflight.filter((p) => !(p.path === "p2p" && p.gen === gen));
    this.note(`data channel ${gen} closes (${why}); ${lost} packets on it lost`);
    for (const link of this.links) {
      if (link.gen !== gen) continue;
      const inc = link.owner;
      this.events.push(() => {
        if (inc.alive) inc.room.roster.onChannel(link.remote, false);
      });
    }
  }

  runEvents() {
    while (this.events.length > 0) /** @type {() => void} */ (this.events.shift())();
  }

  /**
   * The server's side of the WebSocket: a refused send (socket down, page gone) returns false.
   * @param {Inc} inc
   * @param {any} frame
   */
  relaySend(inc, frame) {
    if (!inc.alive || !inc.socketUp) return false;
    if (frame.op !== "send") return true; // signaling: WebRTC is modelled by the data channel steps
    for (const to of frame.to) {
      if (!this.holder(to)) {
        this.note(`relay ${inc.name}→${to} refused: unknown_peer (${describe(JSON.stringify(frame.msg))})`);
        continue;
      }
      this.inflight.push({ path: "relay", gen: 0, from: inc.id, to, text: JSON.stringify(frame.msg) });
    }
    return true;
  }

  /** The live incarnation that has a peer id now. */
  holder(/** @type {string} */ id) {
    return this.incs.find((i) => i.alive && i.id === id);
  }

  /**
   * @param {Inc} inc
   * @param {string} type
   * @param {any} data
   * @param {string} from
   * @param {string} path
   */
  onMessage(inc, type, data, from, path) {
    const m = this.msgs[data?.n - 1];
    this.note(`${inc.name} app gets m${data?.n} from ${from} via ${path}`);
    assert.ok(m, `${inc.name} got a message that was never sent: ${JSON.stringify(data).slice(0, 100)}`);
    assert.equal(type, "t");
    assert.deepEqual(data, m.data, `m${m.n}: data changed on the way`);
    inc.delivered.push({ n: m.n, from, path });
  }

  /** @param {Step} s */
  async step(s) {
    this.apply(s);
    this.runEvents();
    await settle();
    this.runEvents();
    this.checkSafety(`after step ${JSON.stringify(s)}`);
  }

  /** @param {Step} s */
  apply(s) {
    switch (s.k) {
      case "send": {
        const inc = this.current[/** @type {Side} */ (s.side)];
        const ids = [...inc.room.remotes.keys()];
        if (ids.length === 0) return;
        const to = ids[s.to % ids.length];
        const n = this.msgs.length + 1;
        const data = s.big ? { n, pad: "x".repeat(CHUNK_CHARS + 10) } : { n };
        /** @type {Msg} */
        const m = { n, from: inc.id, fromName: inc.name, to, data, status: "pending" };
        this.msgs.push(m);
        this.note(`${inc.name} sendMessage m${n} to ${to}${s.big ? " (2 chunks)" : ""}`);
        inc.room.sendMessage("t", data, { to }).then(
          () => {
            m.status = "resolved";
            this.note(`${m.fromName}: m${n} resolved`);
          },
          (err) => {
            m.status = "rejected";
            this.note(`${m.fromName}: m${n} rejected (${err.name})`);
          },
        );
        return;
      }
      case "deliver":
      case "drop":
      case "dup": {
        if (this.inflight.length === 0) return;
        const i = s.i % this.inflight.length;
        const p = this.inflight[i];
        if (s.k === "dup") {
          this.inflight.push({ ...p });
          this.note(`network duplicates ${p.path} ${p.from}→${p.to}: ${describe(p.text)}`);
        } else if (s.k === "drop") {
          this.inflight.splice(i, 1);
          this.note(`network drops ${p.path} ${p.from}→${p.to}: ${describe(p.text)}`);
        } else {
          this.deliverAt(i);
        }
        return;
      }
      case "flush": {
        // Everything in flight, oldest first (what a calm network does).
        const n = this.inflight.length;
        for (let j = 0, i = 0; j < n && i < this.inflight.length; j++) {
          if (!this.deliverAt(i)) i++;
        }
        return;
      }
      case "time":
        this.note(`${s.ms} ms pass`);
        mock.timers.tick(s.ms);
        return;
      case "open":
        this.openChannel(/** @type {Side} */ (s.first));
        return;
      case "close":
        if (this.channel.open) this.closeChannel("network");
        return;
      case "jam":
        this.jammed = !this.jammed;
        this.note(this.jammed ? "data channel jammed (sends refused)" : "data channel unjammed");
        return;
      case "down": {
        const inc = this.current[/** @type {Side} */ (s.side)];
        if (!inc.socketUp) return;
        inc.socketUp = false;
        inc.room.signaling.connected = false;
        this.note(`${inc.name} WebSocket down`);
        return;
      }
      case "up":
        this.resume(this.current[/** @type {Side} */ (s.side)]);
        return;
      case "ratelimit": {
        // The server refuses this side's latest relay frame: `rate_limited`, the frame is gone.
        const inc = this.current[/** @type {Side} */ (s.side)];
        const i = this.inflight.findLastIndex((p) => p.path === "relay" && p.from === inc.id);
        if (i < 0 || !inc.socketUp) return;
        const [p] = this.inflight.splice(i, 1);
        this.note(`server refuses ${inc.name}'s relay frame (rate_limited, retry after ${s.ms} ms): ${describe(p.text)}`);
        inc.room.onFrame({ op: "error", code: "rate_limited", message: "slow down", retryAfterMs: s.ms });
        return;
      }
      case "notice":
        this.deliverNotice();
        return;
      case "reload":
        this.reload(/** @type {Side} */ (s.side), s);
        return;
      case "bounce":
        this.bounce(/** @type {Side} */ (s.side));
        return;
      default:
        throw new Error(`unknown step ${s.k}`);
    }
  }

  /**
   * Delivers the packet at index i; false when it has to wait (its recipient is detached).
   * @param {number} i
   */
  deliverAt(i) {
    const p = this.inflight[i];
    if (p.path === "relay") {
      const inc = this.holder(p.to);
      if (inc && !inc.socketUp) return false; // the server keeps it for the resume
      this.inflight.splice(i, 1);
      if (!inc) {
        this.note(`relay ${p.from}→${p.to} dropped by the server, no such peer: ${describe(p.text)}`);
        return true;
      }
      this.note(`relay ${p.from}→${inc.name}: ${describe(p.text)}`);
      inc.room.onFrame({ op: "message", from: p.from, msg: JSON.parse(p.text) });
    } else {
      this.inflight.splice(i, 1);
      const link = this.links.find((l) => l.gen === p.gen && l.open && l.owner.alive && l.owner.id === p.to && l.remote.info.id === p.from);
      if (!link) {
        this.note(`p2p ${p.from}→${p.to} lost, channel ${p.gen} gone: ${describe(p.text)}`);
        return true;
      }
      this.note(`p2p ${p.from}→${link.owner.name}: ${describe(p.text)}`);
      link.owner.room.scheduler.onChannelData(link.remote, p.text);
    }
    this.runEvents();
    return true;
  }

  /** A new data channel between the current incarnations, if each knows the other. */
  openChannel(/** @type {Side} */ first) {
    if (this.channel.open) return;
    const order = [this.current[first], this.current[other(first)]];
    const remotes = /** @type {any[]} */ (order.map((inc, j) => inc.room.remotes.get(order[1 - j].id)));
    if (remotes.some((r) => r === undefined)) return;
    const gen = ++this.gens;
    this.channel = { gen, open: true };
    this.note(`data channel ${gen} opens`);
    order.forEach((inc, j) => {
      const remote = remotes[j];
      if (remote.link) remote.link.closed = true; // a dead or never-opened connection
      remote.link = this.makeLink(inc, remote, gen);
    });
    order.forEach((inc, j) => inc.room.roster.onChannel(remotes[j], true));
  }

  /** The WebSocket comes back: the session resumes with the same peer id. */
  resume(/** @type {Inc} */ inc) {
    if (inc.socketUp) return;
    inc.socketUp = true;
    inc.room.signaling.connected = true;
    const peer = this.current[other(inc.side)];
    this.note(`${inc.name} WebSocket resumes; joined.peers = [${peer.id}]`);
    inc.room.onResumed({ op: "joined", resumed: true, peers: [{ id: peer.id, identity: peer.side }] });
  }

  deliverNotice() {
    const next = this.notices.shift();
    if (!next) return;
    if (!next.to.alive) return;
    this.note(`${next.to.name} gets ${next.frame.op} ${next.frame.peer.id}`);
    next.to.room.onFrame(next.frame);
    this.runEvents();
  }

  /**
   * The page of one side reloads: its Room is gone (timers, data channel, Outbox, Inbox) and a
   * fresh one joins, with a new peer id or the same one; the other side is told or not.
   * @param {Side} side
   * @param {Step} s
   */
  reload(side, s) {
    const old = this.current[side];
    const peer = this.current[other(side)];
    old.alive = false;
    this.note(`${old.name} reloads (${s.how ?? "new id"})`);
    old.room.shutdown(new Error("page reloaded"));
    this.runEvents();
    const sameId = this.cfg.reload === "sameId";
    const inc = this.spawn(side, sameId ? old.id : `${side}${++this.newIds}`);
    const left = { to: peer, frame: { op: "peer_left", peer: { id: old.id, identity: side }, reason: "left" } };
    const joined = { to: peer, frame: { op: "peer_joined", peer: { id: inc.id, identity: side } } };
    if (!sameId) {
      // The server: the new peer joins; the old one leaves now or when its session times out.
      this.notices.push(...(s.leftFirst ? [left, joined] : [joined, left]));
    } else if (s.how === "announced") {
      this.notices.push(left, joined);
    }
    // "silent": the other side sees nothing, as for a resume.
  }

  /**
   * The cluster case (bluecam-core tests, "a peer that expired here as it resumed elsewhere
   * comes back"): the other side is told `peer_left` then `peer_joined` for this side's SAME
   * peer id, while this side's Room lives on with all its state.
   * @param {Side} side
   */
  bounce(side) {
    const inc = this.current[side];
    const peer = this.current[other(side)];
    this.note(`${peer.name} will see ${inc.id} leave and come back (${inc.name} keeps its state)`);
    this.notices.push(
      { to: peer, frame: { op: "peer_left", peer: { id: inc.id, identity: side }, reason: "timeout" } },
      { to: peer, frame: { op: "peer_joined", peer: { id: inc.id, identity: side } } },
    );
  }

  /** Heals the network and lets every timer run: now every message must have settled. */
  async quiesce() {
    this.note("--- quiesce: network healed ---");
    this.jammed = false;
    for (const side of SIDES) this.resume(this.current[side]);
    while (this.notices.length > 0) this.deliverNotice();
    await settle();
    for (let round = 0; round < QUIESCE_ROUNDS; round++) {
      while (this.inflight.length > 0) {
        this.deliverAt(0);
        await settle();
        this.checkSafety("while quiescing");
      }
      if (this.msgs.every((m) => m.status !== "pending")) break;
      mock.timers.tick(1000);
      this.runEvents();
      await settle();
    }
    this.checkSafety("after quiescing");
    const pending = this.msgs.filter((m) => m.status === "pending");
    if (pending.length > 0) {
      this.fail(`never delivered-and-acknowledged nor reported to its sender after ${QUIESCE_ROUNDS} quiet seconds: ` +
        pending.map((m) => `m${m.n} (${m.fromName}→${m.to}, delivered to ${this.deliveredTo(m) || "nobody"})`).join(", "));
    }
  }

  deliveredTo(/** @type {Msg} */ m) {
    return this.incs.filter((i) => i.id === m.to && i.delivered.some((d) => d.n === m.n)).map((i) => i.name).join(" and ");
  }

  /** @param {string} when */
  checkSafety(when) {
    for (const inc of this.incs) {
      /** @type {Map<string, number>} */
      const last = new Map();
      /** @type {Set<number>} */
      const seen = new Set();
      for (const d of inc.delivered) {
        const m = this.msgs[d.n - 1];
        if (m.to !== inc.id || m.from !== d.from) this.fail(`${when}: m${d.n} (${m.fromName}→${m.to}) delivered to ${inc.name} as from ${d.from}`);
        if (seen.has(d.n)) this.fail(`${when}: ${inc.name} got m${d.n} twice`);
        seen.add(d.n);
        const prev = last.get(d.from);
        if (prev !== undefined && d.n < prev) this.fail(`${when}: ${inc.name} got m${d.n} after m${prev} (from ${d.from}): out of order`);
        last.set(d.from, d.n);
      }
    }
    for (const m of this.msgs) {
      if (m.status === "resolved" && !this.deliveredTo(m)) {
        this.fail(`${when}: silent loss: m${m.n} (${m.fromName}→${m.to}) was acknowledged, yet no incarnation of ${m.to} got it`);
      }
    }
  }

  /** The per-pair state of every live Room, for failure messages. */
  state() {
    return this.incs.filter((i) => i.alive).map((inc) => [...inc.room.remotes.entries()].map(([id, r]) =>
      `${inc.name}→${id}: outbox next ${r.outbox.nextSeq} pending [${r.outbox.pending.map((/** @type {any} */ e) => e.seq).join(",")}]; ` +
      `inbox from ${id}: expected ${r.inbox.expected} held [${[...r.inbox.held.keys()].join(",")}]`).join("\n")).join("\n");
  }

  /** @param {string} what @returns {never} */
  fail(what) {
    throw new assert.AssertionError({
      message: `${what}\n--- state ---\n${this.state()}\n--- trace (last ${LOG_LINES}) ---\n${this.log.slice(-LOG_LINES).join("\n")}`,
    });
  }

  dispose() {
    for (const inc of this.incs) {
      if (!inc.alive) continue;
      inc.alive = false;
      inc.room.shutdown(new Error("end of run"));
    }
    mock.timers.reset();
  }
}

// ---- steps ---------------------------------------------------------------------------------

const sideArb = fc.constantFrom(/** @type {const} */ ("A"), /** @type {const} */ ("B"));
/** @param {fc.Arbitrary<Step>[]} extra */
function stepsArb(extra = []) {
  /** @type {fc.WeightedArbitrary<Step>[]} */
  const steps = [
    { weight: 6, arbitrary: fc.record({ k: fc.constant("send"), side: sideArb, to: fc.nat(3), big: fc.nat(11).map((x) => x === 11) }) },
    { weight: 8, arbitrary: fc.record({ k: fc.constant("deliver"), i: fc.nat(20) }) },
    { weight: 2, arbitrary: fc.record({ k: fc.constant("drop"), i: fc.nat(20) }) },
    { weight: 2, arbitrary: fc.record({ k: fc.constant("dup"), i: fc.nat(20) }) },
    { weight: 1, arbitrary: fc.record({ k: fc.constant("flush") }) },
    { weight: 4, arbitrary: fc.record({ k: fc.constant("time"), ms: fc.constantFrom(10, 100, 250, 1000, 1600, 5000, 31000) }) },
    { weight: 3, arbitrary: fc.record({ k: fc.constant("open"), first: sideArb }) },
    { weight: 1, arbitrary: fc.record({ k: fc.constant("close") }) },
    { weight: 1, arbitrary: fc.record({ k: fc.constant("jam") }) },
    { weight: 1, arbitrary: fc.record({ k: fc.constant("down"), side: sideArb }) },
    { weight: 2, arbitrary: fc.record({ k: fc.constant("up"), side: sideArb }) },
    { weight: 1, arbitrary: fc.record({ k: fc.constant("ratelimit"), side: sideArb, ms: fc.constantFrom(100, 1000) }) },
    ...extra.map((arbitrary) => ({ weight: 1, arbitrary })),
  ];
  return fc.array(fc.oneof(...steps), { minLength: 1, maxLength: 80, size: "max" });
}

/**
 * @param {{reload: "none" | "newId" | "sameId", deliveryTimeoutMs?: number}} cfg
 * @param {Step[]} steps
 */
async function run(cfg, steps) {
  const world = new World(cfg);
  try {
    for (const s of steps) await world.step(s);
    await world.quiesce();
  } finally {
    world.dispose();
  }
}

// ---- properties ----------------------------------------------------------------------------

test("exactly once, in order, or told: lossy, duplicating, reordering network, both paths, WebSocket outages, time", TIMEOUT, async () => {
  const cfg = /** @type {const} */ ({ reload: "none" });
  await fc.assert(fc.asyncProperty(stepsArb(), (steps) => run(cfg, steps)), PARAMS);
});

test("exactly once, in order, or told: with a short delivery bound (3 s), sends past it reject and the pair starts over", TIMEOUT, async () => {
  // The steps include 5 s and 31 s of time, outages and a jammed channel: the bound is hit
  // often, with messages in flight on both paths and later ones queued behind.
  const cfg = /** @type {const} */ ({ reload: "sameId", deliveryTimeoutMs: 3000 });
  const extra = [fc.record({ k: fc.constant("bounce"), side: sideArb }), fc.record({ k: fc.constant("notice") })];
  await fc.assert(fc.asyncProperty(stepsArb(extra), (steps) => run(cfg, steps)), PARAMS);
});

test("exactly once, in order, or told: and either side reloading, back as a new peer id (as the server does it)", TIMEOUT, async () => {
  const cfg = /** @type {const} */ ({ reload: "newId" });
  const extra = [
    fc.record({ k: fc.constant("reload"), side: sideArb, leftFirst: fc.boolean() }),
    fc.record({ k: fc.constant("notice") }),
    fc.record({ k: fc.constant("notice") }),
  ];
  await fc.assert(fc.asyncProperty(stepsArb(extra), (steps) => run(cfg, steps)), PARAMS);
});

// The same peer id coming back (docs/protocol.md §15: a pair's sequence space lives "for as long
// as the sender's peer id lives"). Three ways, each side either way round:
//   - "bounce": the other side is told peer_left then peer_joined for this side's id while this
//     side's Room lives on with all its state. The server does this in a cluster: a peer that
//     expired on one node as it resumed on another comes back (bluecam-core tests/it/cluster.rs,
//     "a_peer_that_expired_here_as_it_resumed_elsewhere_comes_back"). The other side's Room
//     removes the peer (its Outbox rejects, its Inbox is dropped) and adds a fresh one.
//   - "reload", "silent": this side's page reloads (fresh Room, fresh Outbox and Inbox) and is
//     back with the same id; the other side sees nothing, as for a resume.
//   - "reload", "announced": the same, and the other side is told peer_left then peer_joined.
// Either way one side's per-pair state starts over at 1 while the other's goes on (or old frames
// of the previous incarnation are still in flight), and the invariant breaks. The shrunk
// counterexample below runs first; FIFO delivery only, no loss, no reordering.
//
// Found (do not fix here; see the todo): with A's Outbox for B reset and B's Inbox for A kept,
// A's new seq 1 collides with the old seq 1: B drops the fresh message as a duplicate and acks
// it, so sendMessage resolves for a message B never got. Other shrunk counterexamples of the
// same cause: B, having delivered m1 with its ack still pending (10 ms delay), sees A leave and
// come back; its fresh Inbox delivers A's retransmitted s1 = m1 a second time. And: m1 acked,
// then B sees A leave and come back; A's s2 = m2 is held by B's fresh Inbox (expecting s1)
// forever, acked with 0, retransmitted every 30 s, neither delivered nor rejected.
const SAME_ID_COUNTEREXAMPLE = [
  { k: "bounce", side: "B" },
  { k: "send", side: "A", to: 0, big: false },
  { k: "notice" },
  { k: "notice" },
  { k: "send", side: "A", to: 0, big: false },
  { k: "deliver", i: 0 },
];

test("exactly once, in order, or told: and either side leaving and rejoining with the SAME peer id", {
  ...TIMEOUT,
}, async () => {
  const cfg = /** @type {const} */ ({ reload: "sameId" });
  const extra = [
    fc.record({ k: fc.constant("reload"), side: sideArb, how: fc.constantFrom("announced", "silent") }),
    fc.record({ k: fc.constant("bounce"), side: sideArb }),
    fc.record({ k: fc.constant("notice") }),
    fc.record({ k: fc.constant("notice") }),
  ];
  await fc.assert(fc.asyncProperty(stepsArb(extra), (steps) => run(cfg, steps)), {
    ...PARAMS,
    examples: [[SAME_ID_COUNTEREXAMPLE]],
  });
});
