// The key exchange and the records of e2ee.js, with Node's WebCrypto (the same API as the
// browser's). Browser tests with a hostile proxy are in tests/e2e/e2ee.test.js.
import { test } from "node:test";
import assert from "node:assert/strict";
import { RoomCrypto, MismatchError, MIN_KEY_CHARS, isSealed } from "./e2ee.js";

const KEY = "k7Qx2cV9pL0sWm4RtY8bNe1Hf6Ja3Zd5";
const ROOM = "room-1";

/**
 * Two (or more) peers of one room, each with its RoomCrypto bound.
 * @param {string[]} ids
 * @param {string[]} [keys]
 */
async function peers(ids, keys = ids.map(() => KEY)) {
  const out = ids.map((id, i) => ({ id, crypto: new RoomCrypto(keys[i]) }));
  await Promise.all(out.map((p) => p.crypto.bind(ROOM, p.id)));
  return out;
}

/**
 * Runs the exchange between a and b as the SDK does: both send a hello at once, and each
 * answers a hello that does not hold its current public key.
 * @param {{id: string, crypto: RoomCrypto}} a
 * @param {{id: string, crypto: RoomCrypto}} b
 * @returns {Promise<number>} hellos sent
 */
async function exchange(a, b) {
  let sent = 0;
  /** @type {[{id: string, crypto: RoomCrypto}, {id: string, crypto: RoomCrypto}, unknown][]} */
  const wire = [];
  const say = async (/** @type {typeof a} */ from, /** @type {typeof a} */ to) => {
    sent++;
    wire.push([from, to, (await from.crypto.pair(to.id).hello()).e2ee]);
  };
  await Promise.all([say(a, b), say(b, a)]);
  while (wire.length > 0) {
    const [from, to, hello] = /** @type {any} */ (wire.shift());
    if (await to.crypto.pair(from.id).onHello(hello)) await say(to, from);
  }
  return sent;
}

/**
 * Seals with `from`'s pair for `to` and returns the record.
 * @param {{id: string, crypto: RoomCrypto}} from
 * @param {string} to
 * @param {"relay" | "signal" | "channel"} kind
 * @param {string} text
 */
async function seal(from, to, kind, text) {
  /** @type {{x: string} | null} */
  let rec = null;
  await from.crypto.pair(to).seal(kind, text, (r) => {
    rec = r;
  });
  assert.ok(rec && isSealed(rec));
  return /** @type {{x: string}} */ (rec);
}

/**
 * Opens with `to`'s pair for `from`: the text, or null when the record was refused.
 * @param {{id: string, crypto: RoomCrypto}} to
 * @param {string} from
 * @param {"relay" | "signal" | "channel"} kind
 * @param {string} x
 */
async function open(to, from, kind, x) {
  /** @type {string | null} */
  let got = null;
  await to.crypto.pair(from).open(kind, x, (t) => {
    got = t;
  });
  return got;
}

test("a room key shorter than 128 bits of base64url is refused", () => {
  assert.throws(() => new RoomCrypto("short"), TypeError);
  assert.throws(() => new RoomCrypto(42), TypeError);
  assert.doesNotThrow(() => new RoomCrypto("x".repeat(MIN_KEY_CHARS)));
});

test("two peers with the key exchange hellos (four at most) and read each other's records", async () => {
  const [a, b] = await peers(["alice", "bob"]);
  const sent = await exchange(a, b);
  assert.ok(sent <= 4, `${sent} hellos`);
  assert.equal(a.crypto.pair("bob").state, "ready");
  assert.equal(b.crypto.pair("alice").state, "ready");
  for (const kind of /** @type {const} */ (["relay", "signal", "channel"])) {
    const text = JSON.stringify({ v: 1, k: "m", s: 1, t: "chat", d: `marker ${kind} ✓` });
    const rec = await seal(a, "bob", kind, text);
    assert.ok(!rec.x.includes("marker"));
    assert.equal(await open(b, "alice", kind, rec.x), text);
    const back = await seal(b, "alice", kind, text + "!");
    assert.equal(await open(a, "bob", kind, back.x), text + "!");
  }
  assert.equal(a.crypto.rejected + b.crypto.rejected, 0);
});

test("records keep their order through the asynchronous queues", async () => {
  const [a, b] = await peers(["a", "b"]);
  await exchange(a, b);
  /** @type {string[]} */
  const wire = [];
  const pa = a.crypto.pair("b");
  await Promise.all(Array.from({ length: 50 }, (_, i) => pa.seal("relay", `m${i}`, (r) => wire.push(r.x))));
  /** @type {string[]} */
  const got = [];
  const pb = b.crypto.pair("a");
  await Promise.all(wire.map((x) => pb.open("relay", x, (t) => got.push(t))));
  assert.deepEqual(got, Array.from({ length: 50 }, (_, i) => `m${i}`));
});

test("an altered, misaddressed or misplaced record is dropped and counted, never delivered", async () => {
  const [a, b, c] = await peers(["a", "b", "c"]);
  await exchange(a, b);
  await exchange(a, c);
  await exchange(b, c);
  const rec = await seal(a, "b", "relay", '{"d":"hello"}');
  // One character of the base64 changed (the JSON around it stays valid).
  const i = 20;
  const altered = rec.x.slice(0, i) + (rec.x[i] === "A" ? "B" : "A") + rec.x.slice(i + 1);
  assert.equal(await open(b, "a", "relay", altered), null);
  // Said to come from c (its pair with b has other keys), or to be for c, or of another kind.
  assert.equal(await open(b, "c", "relay", rec.x), null);
  assert.equal(await open(c, "a", "relay", rec.x), null);
  assert.equal(await open(b, "a", "channel", rec.x), null);
  assert.equal(await open(b, "a", "relay", "AAAA"), null);
  assert.equal(b.crypto.rejected + c.crypto.rejected, 5);
  // The real one still opens.
  assert.equal(await open(b, "a", "relay", rec.x), '{"d":"hello"}');
});

test("a signal replayed or out of order is refused", async () => {
  const [a, b] = await peers(["a", "b"]);
  await exchange(a, b);
  /** @type {string[]} */
  const wire = [];
  const pa = a.crypto.pair("b");
  for (const d of ["offer", "candidate 1", "candidate 2"]) await pa.sealSignal({ d }, (r) => wire.push(r.x));
  /** @type {unknown[]} */
  const got = [];
  const pb = b.crypto.pair("a");
  const take = (/** @type {string} */ x) => pb.openSignal(x, (d) => got.push(d));
  await take(wire[0]);
  await take(wire[0]);
  await take(wire[2]);
  await take(wire[1]);
  assert.deepEqual(got, [{ d: "offer" }, { d: "candidate 2" }]);
  assert.equal(b.crypto.rejected, 2);
});

test("another room key is a mismatch on both sides; so is a hello for another pair", async () => {
  const [a, b] = await peers(["a", "b"], [KEY, KEY.replace("k", "K")]);
  const ha = await a.crypto.pair("b").hello();
  const hb = await b.crypto.pair("a").hello();
  await assert.rejects(b.crypto.pair("a").onHello(ha.e2ee), MismatchError);
  await assert.rejects(a.crypto.pair("b").onHello(hb.e2ee), MismatchError);
  // A hello of a's to b, replayed to c (the same key): its MAC names b.
  const [, , c] = await peers(["a2", "b2", "c"]);
  const [x] = await peers(["a"]);
  const toB = await x.crypto.pair("b").hello();
  await assert.rejects(c.crypto.pair("a").onHello(toB.e2ee), MismatchError);
  await assert.rejects(c.crypto.pair("a").onHello({ v: 1, pub: "", r: "", mac: "" }), MismatchError);
  await assert.rejects(c.crypto.pair("a").onHello("hello"), MismatchError);
});

test("what waits for the keys is sealed once they exist, and fails quietly on a mismatch", async () => {
  const [a, b] = await peers(["a", "b"]);
  /** @type {string[]} */
  const wire = [];
  const pa = a.crypto.pair("b");
  const early = pa.seal("relay", "early", (r) => wire.push(r.x));
  assert.equal(wire.length, 0);
  await exchange(a, b);
  await early;
  assert.equal(await open(b, "a", "relay", wire[0]), "early");
  const [c] = await peers(["c"]);
  const pc = c.crypto.pair("d");
  const never = pc.seal("relay", "never", () => assert.fail("sealed without keys"));
  pc.mismatch();
  await never;
  assert.equal(c.crypto.rejected, 0);
});

test("a new session of the peer (a new public key) gets new keys: the old ones' records fail", async () => {
  const [a, b] = await peers(["a", "b"]);
  await exchange(a, b);
  const old = await seal(b, "a", "relay", "from the old session");
  // b reloads and comes back with the same id and a new key pair.
  const b2 = { id: "b", crypto: new RoomCrypto(KEY) };
  await b2.crypto.bind(ROOM, "b");
  await exchange(a, b2);
  assert.equal(await open(a, "b", "relay", old.x), null);
  const fresh = await seal(b2, "a", "relay", "from the new session");
  assert.equal(await open(a, "b", "relay", fresh.x), "from the new session");
});

test("a hello MACed for a peer whose id holds a separator cannot pass as another pair's", async () => {
  const [a, b] = await peers(["a", "b"]);
  const [m] = await peers(["x"], ["m".repeat(32)]);
  // The server announces to a a peer "b|<m's key>"; a's hello to it is passed to b as a's,
  // with the fields shifted.
  const h = (await a.crypto.pair(`b|${m.crypto.pub}`).hello()).e2ee;
  const forged = { v: 1, pub: m.crypto.pub, r: `${h.pub}|${h.r}`, mac: h.mac };
  await assert.rejects(b.crypto.pair("a").onHello(forged), MismatchError);
  await assert.rejects(b.crypto.pair("a").onHello({ ...h, r: "not a key" }), MismatchError);
  assert.notEqual(b.crypto.pair("a").state, "ready");
});

test("after a new session's exchange, an earlier session's hello and signals replayed are refused", async () => {
  const [a1, b] = await peers(["a", "b"]);
  await exchange(a1, b);
  const oldHello = (await a1.crypto.pair("b").hello()).e2ee;
  /** @type {string[]} */
  const oldSignals = [];
  for (const d of ["offer 1", "candidate 1"]) await a1.crypto.pair("b").sealSignal({ d }, (r) => oldSignals.push(r.x));
  /** @type {unknown[]} */
  const got = [];
  const pb = b.crypto.pair("a");
  for (const x of oldSignals) await pb.openSignal(x, (d) => got.push(d));
  // a reloads; the server gives its new session the same id.
  const [a2] = await peers(["a"]);
  await exchange(a2, b);
  /** @type {string[]} */
  const newSignals = [];
  await a2.crypto.pair("b").sealSignal({ d: "offer 2" }, (r) => newSignals.push(r.x));
  await pb.openSignal(newSignals[0], (d) => got.push(d));
  const rejected = b.crypto.rejected;
  // Replays: the old hello (refused: an earlier key), then its signals (under the current keys
  // they do not open, and their counters are spent), then the new one again.
  await pb.takeHello(oldHello, () => assert.fail("an old hello taken"), () => assert.fail("an old hello is not a mismatch"));
  for (const x of [...oldSignals, ...newSignals]) await pb.openSignal(x, (d) => got.push(d));
  assert.deepEqual(got, [{ d: "offer 1" }, { d: "candidate 1" }, { d: "offer 2" }]);
  assert.equal(b.crypto.rejected, rejected + 4);
  assert.equal(pb.theirPub, a2.crypto.pub, "still the new session's key");
});

test("a record that comes before the hello it needs waits for it (no deadlock)", async () => {
  const [a, b] = await peers(["a", "b"]);
  const pa = a.crypto.pair("b");
  const pb = b.crypto.pair("a");
  const hb = (await pb.hello()).e2ee;
  await pb.takeHello((await pa.hello()).e2ee, () => {}, () => assert.fail("mismatch"));
  const rec = await seal(b, "a", "relay", "early");
  /** @type {string | null} */
  let got = null;
  const opened = pa.open("relay", rec.x, (t) => {
    got = t;
  });
  await pa.takeHello(hb, () => {}, () => assert.fail("mismatch"));
  await opened;
  assert.equal(got, "early");
});

test("once a pair mismatched, nothing queued for it goes out and nothing queued from it is delivered", async () => {
  const [a, b] = await peers(["a", "b"]);
  await exchange(a, b);
  const pa = a.crypto.pair("b");
  const rec = await seal(b, "a", "relay", "late");
  let sent = 0;
  let delivered = 0;
  const out = pa.seal("relay", "x", () => sent++);
  const inn = pa.open("relay", rec.x, () => delivered++);
  pa.mismatch();
  await Promise.all([out, inn]);
  assert.deepEqual([sent, delivered], [0, 0]);
  // Renewed (the peer came back), the pair exchanges again.
  a.crypto.renew("b");
  await exchange(a, b);
  assert.equal(a.crypto.pair("b").state, "ready");
});

test("a page without a key answers a hello with {e2ee: false}: the keyed side mismatches", async () => {
  const [a] = await peers(["a"]);
  await assert.rejects(a.crypto.pair("b").onHello(false), /no room key/);
});

test("an earlier session's hello held back and replayed after the new session's exchange cannot take over", async () => {
  const [a, b1] = await peers(["a", "b"]);
  const held = (await b1.crypto.pair("a").hello()).e2ee;
  // b reloads; the server gives the new session the same id, and delivers the old hello last.
  const [b2] = await peers(["b"]);
  await exchange(a, b2);
  const pa = a.crypto.pair("b");
  await pa.takeHello(held, () => assert.fail("taken"), () => assert.fail("a replay is not a mismatch"));
  assert.equal(pa.theirPub, b2.crypto.pub, "still the new session's key");
  const rec = await seal(b2, "a", "relay", "still talking");
  assert.equal(await open(a, "b", "relay", rec.x), "still talking");
});

test("a record that comes right after a hello with new keys is opened with them", async () => {
  const [a, b1] = await peers(["a", "b"]);
  await exchange(a, b1);
  const [b2] = await peers(["b"]);
  const pa = a.crypto.pair("b");
  const hello = (await b2.crypto.pair("a").hello()).e2ee;
  await b2.crypto.pair("a").onHello((await pa.hello()).e2ee);
  const rec = await seal(b2, "a", "relay", "sealed with the new keys");
  // Both arrive together (one poll, or a resume's replay): the hello first.
  /** @type {string | null} */
  let got = null;
  const taken = pa.takeHello(hello, () => {}, () => assert.fail("mismatch"));
  const opened = pa.open("relay", rec.x, (t) => {
    got = t;
  });
  await Promise.all([taken, opened]);
  assert.equal(got, "sealed with the new keys");
});

test("a pair started over for a peer that came back re-derives the same keys with the same session", async () => {
  const [a, b] = await peers(["a", "b"]);
  await exchange(a, b);
  /** @type {string[]} */
  const sig = [];
  await b.crypto.pair("a").sealSignal({ d: 1 }, (r) => sig.push(r.x));
  /** @type {unknown[]} */
  const got = [];
  await a.crypto.pair("b").openSignal(sig[0], (d) => got.push(d));
  // The cluster reports b gone and back (the same session): a starts the pair over.
  a.crypto.fresh("b");
  await exchange(a, b);
  await b.crypto.pair("a").sealSignal({ d: 2 }, (r) => sig.push(r.x));
  await a.crypto.pair("b").openSignal(sig[0], (d) => got.push(d));
  await a.crypto.pair("b").openSignal(sig[1], (d) => got.push(d));
  assert.deepEqual(got, [{ d: 1 }, { d: 2 }], "counting goes on; the old signal stays spent");
});
