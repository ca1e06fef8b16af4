// The signaling queue: what waits while the connection is down is kept in order, never dropped
// for want of room, and only superseded frames go (docs/sdk.md, "Connections").
import { test } from "node:test";
import assert from "node:assert/strict";
import { Signaling } from "./signaling.js";

const handlers = {
  onFrame() {}, onResumed() {}, onConnectionChange() {}, onWritable() {}, onFatal() {},
};

/** A signaling object whose connection is down (nothing opened: `join` is never called). */
const down = () => new Signaling(["ws://127.0.0.1:1/v1/ws"], "token", handlers, undefined, undefined);

/** @param {Signaling} s */
function up(s) {
  /** @type {string[]} */
  const sent = [];
  s.connected = true;
  s.tokens = s.burst = 1e9;
  s.ws = /** @type {any} */ ({ readyState: 1, send: (/** @type {string} */ t) => sent.push(t) });
  return sent;
}

test("thousands of signals wait while offline and all go, in order, once back", () => {
  const s = down();
  for (let i = 0; i < 5000; i++) s.sendOrQueue({ op: "signal", to: "p", data: { gen: "g1", candidate: { i } } });
  assert.equal(s.queued.length, 5000, "nothing dropped for want of room");
  const sent = up(s);
  s.flushQueued();
  assert.deepEqual(sent.map((t) => JSON.parse(t).data.candidate.i), [...Array(5000).keys()]);
  assert.equal(s.queued.length, 0);
});

test("a newer peer connection's signal supersedes the older ones to the same peer only; media states supersede", () => {
  const s = down();
  s.sendOrQueue({ op: "signal", to: "p", data: { gen: "g1", description: { type: "offer" } } });
  s.sendOrQueue({ op: "signal", to: "p", data: { gen: "g1", candidate: 1 } });
  s.sendOrQueue({ op: "signal", to: "q", data: { gen: "h1", candidate: 2 } });
  s.sendOrQueue({ op: "signal", to: "p", data: { media: { audio: true, video: true } } });
  s.sendOrQueue({ op: "signal", to: "p", data: { media: { audio: false, video: true } } });
  s.sendOrQueue({ op: "signal", to: "p", data: { gen: "g2", description: { type: "offer" } } });
  assert.deepEqual(s.queued.map((f) => [f.to, f.data.gen ?? "media", f.data.media?.audio]), [
    ["q", "h1", undefined],
    ["p", "media", false],
    ["p", "g2", undefined],
  ]);
});

test("while frames wait, a new one waits behind them (no overtaking)", () => {
  const s = down();
  s.sendOrQueue({ op: "signal", to: "p", data: { gen: "g", candidate: 1 } });
  const sent = up(s);
  s.sendOrQueue({ op: "signal", to: "p", data: { gen: "g", candidate: 2 } });
  assert.deepEqual(sent, [], "not sent ahead of the one waiting");
  s.flushQueued();
  assert.deepEqual(sent.map((t) => JSON.parse(t).data.candidate), [1, 2]);
});
