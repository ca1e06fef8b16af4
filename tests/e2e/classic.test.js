// @ts-check
// A classic page: the SDK loaded only with <script src=".../sdk/bluecam.global.js">, the classic
// globals (JoinRoom, JoinCall, sendMessage, window.BlueCam) and options, inline onclick sends.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TestServer, launchPeer, waitFor, evaluate, expectEvents, endTest, stopAll, join, waitPeers, expectAll, received,
} from "./harness.js";

/** @type {TestServer} */
let server;

before(async () => {
  server = await TestServer.start();
});
afterEach(endTest);
after(stopAll);

// A <video> before the one with id "video": a bare id that is also a tag name must find the
// element with that id, not the first of that tag.
const PAGE = `<!doctype html>
<html><body>
<video id="remoteVideo" autoplay playsinline></video>
<video id="video" autoplay playsinline muted></video>
<button id="muteAudio">mic</button><button id="muteVideo">cam</button>
<button id="share" onclick="sendMessage('shareLink', 'https://example.com/x')">share</button>
<button id="draw" onclick="sendMessage('changedDrawing', {circles: [{x: 1}], bgColor: 'blue'})">draw</button>
<script src="/sdk/bluecam.global.js"></script>
<script>
  window.got = [];
  window.notFound = 0;
  window.warnings = [];
  var warn = console.warn;
  console.warn = function () { window.warnings.push(Array.from(arguments).join(" ")); warn.apply(console, arguments); };
  // Before any join, and never awaited: no unhandled rejection, no throw.
  window.early = sendMessage("tooEarly", 1);
  function start(extra) {
    var options = {
      localVideo: "video", remoteVideo: "remoteVideo",
      muteAudioBtn: "muteAudio", muteVideoBtn: "muteVideo",
      onMessage: function (type, data, from) { got.push({ type: type, data: data, from: from.id }); },
      roomNotFoundCallback: function () { notFound++; },
    };
    for (var k in extra) options[k] = extra[k];
    return JoinRoom(options).then(function (room) { window.room = room; return room.self.id; });
  }
</script>
</body></html>`;

/**
 * A peer whose page is the classic page, on the server's origin (written into a page the server
 * served, so that the browser treats it as a page of that server).
 * @param {string} label
 */
async function classicPeer(label) {
  const peer = await launchPeer(server, { label });
  await peer.page.setContent(PAGE, { waitUntil: "load" });
  return peer;
}

test("a classic page: script tag, JoinRoom with roomName/userId, ids, mute buttons, inline sendMessage, BlueCam global", async () => {
  const room = await server.room();
  const [a, b] = [await classicPeer("alice"), await classicPeer("bob")];
  // The page's backend mints tokens: here the test, exposed to the page.
  await a.page.exposeFunction("mintToken", (/** @type {string} */ r, /** @type {string} */ u) => server.token(r, u));
  const aId = await evaluate(a.page, (room) => /** @type {any} */ (window).start({
    roomName: room, userId: "alice",
    getToken: (/** @type {{roomName: string, userId: string}} */ c) => /** @type {any} */ (window).mintToken(c.roomName, c.userId),
    pubnubSubscribeKey: "sub-c-classic", pubnubPublishKey: "pub-c-classic",
  }), room, "JoinRoom with roomName and userId");
  const bId = await evaluate(b.page, (token) => /** @type {any} */ (window).JoinCall === /** @type {any} */ (window).JoinRoom
    && /** @type {any} */ (window).start({ token }), await server.token(room, "bob"), "JoinCall with a token");
  assert.equal(typeof bId, "string");
  assert.equal(await evaluate(a.page, () => /** @type {any} */ (window).room.transport, undefined, "transport"), "websocket");
  // window.BlueCam has every export once loaded.
  const exported = await evaluate(a.page, async () => {
    const g = /** @type {any} */ (window).BlueCam;
    await g.ready;
    return ["joinRoom", "JoinRoom", "sendMessage", "Room", "RoomNotFoundError", "PeerUnreachableError"].filter((n) => g[n] === undefined);
  }, undefined, "BlueCam.ready");
  assert.deepEqual(exported, [], "missing from window.BlueCam");
  // The preview went to #video (not the first <video>), the other side's camera to #remoteVideo.
  await waitFor(() => evaluate(a.page, () => {
    const local = /** @type {HTMLVideoElement} */ (document.getElementById("video"));
    const remote = /** @type {HTMLVideoElement} */ (document.getElementById("remoteVideo"));
    const room = /** @type {any} */ (window).room;
    return local.srcObject === room.local && remote.srcObject instanceof MediaStream && remote.readyState >= 2;
  }, undefined, "the video elements"), "the preview in #video and the remote camera playing in #remoteVideo");
  // Inline handlers: a string and an object, in order.
  await a.page.click("#share");
  await a.page.click("#draw");
  const got = await waitFor(async () => {
    const g = await evaluate(b.page, () => /** @type {any} */ (window).got, undefined, "got");
    return g.length >= 2 ? g : null;
  }, "two messages from inline handlers");
  assert.deepEqual(got, [
    { type: "shareLink", data: "https://example.com/x", from: aId },
    { type: "changedDrawing", data: { circles: [{ x: 1 }], bgColor: "blue" }, from: aId },
  ]);
  // The mute buttons toggle and show it.
  await a.page.click("#muteAudio");
  assert.equal(await a.page.getAttribute("#muteAudio", "aria-pressed"), "true");
  assert.equal(await evaluate(a.page, () => /** @type {any} */ (window).room.audioEnabled, undefined, "audio"), false);
  // The sendMessage before any join resolved false with a console warning, and the PubNub keys
  // got exactly one warning.
  const page = await evaluate(a.page, async () => ({
    early: await /** @type {any} */ (window).early,
    warnings: /** @type {any} */ (window).warnings,
  }), undefined, "warnings");
  assert.equal(page.early, false);
  assert.equal(page.warnings.filter((/** @type {string} */ w) => w.includes("pubnub")).length, 1, JSON.stringify(page.warnings));
  assert.ok(page.warnings.some((/** @type {string} */ w) => w.includes("tooEarly")), JSON.stringify(page.warnings));
  await expectEvents([a, b]);
});

test("classic pages: a missing room calls roomNotFoundCallback; no token and no way to get one is a clear error", async () => {
  const p = await classicPeer("joiner");
  const room = await server.room();
  const token = await server.token(room, "x");
  assert.equal((await server.api("DELETE", `/v1/rooms/${room}`)).status, 204);
  const r = await evaluate(p.page, async (token) => {
    const w = /** @type {any} */ (window);
    const out = [];
    for (const extra of [{ token }, { roomName: "r", userId: "u" }]) {
      try {
        await w.start(extra);
        out.push("joined");
      } catch (e) {
        out.push(`${/** @type {Error} */ (e).name}: ${/** @type {Error} */ (e).message}`);
      }
    }
    return { out, notFound: w.notFound };
  }, token, "two failing JoinRoom calls");
  assert.equal(r.notFound, 1);
  assert.match(r.out[0], /^RoomNotFoundError/);
  assert.match(r.out[1], /^BlueCamError: joinRoom needs a token, or roomName, userId and getToken/);
  await expectEvents([p]);
});

test("fire-and-forget sendMessage to a peer that left: onError, no unhandled rejection", async () => {
  const room = await server.room();
  const [a, b] = [await classicPeer("alice"), await classicPeer("bob")];
  await evaluate(a.page, (t) => /** @type {any} */ (window).start({ token: t, video: false, audio: false, deliveryTimeoutMs: 3000 }), await server.token(room, "alice"), "join a");
  const bId = await evaluate(b.page, (t) => /** @type {any} */ (window).start({ token: t, video: false, audio: false }), await server.token(room, "bob"), "join b");
  await waitFor(() => evaluate(a.page, () => /** @type {any} */ (window).room.peers.length === 1, undefined, "peers"), "alice sees bob");
  // Bob's network goes (no leave): alice's message to him can never be acknowledged.
  await evaluate(b.page, () => {
    const room = /** @type {any} */ (window).room;
    room.signaling.cut(600000);
    for (const r of room.remotes.values()) r.link?.close();
  }, undefined, "cut bob");
  const sent = await evaluate(a.page, (to) => /** @type {any} */ (window).sendMessage("lost", 1, { to }), bId, "the classic send");
  assert.equal(sent, false, "resolved false, did not reject");
  // The failure went to onError (the harness fails the test on any unhandled rejection).
  await expectEvents([a], { errors: [{ name: "PeerUnreachableError" }] });
  await expectEvents([b], { errors: { every: { name: "PeerUnreachableError" }, atLeast: 0 } });
});

test("a peer whose token has sendData false: ForbiddenError before anything goes out, and its acks always pass", async () => {
  const room = await server.room();
  const r = await server.api("POST", `/v1/rooms/${room}/tokens`, { identity: "viewer", permissions: { sendData: false } });
  assert.equal(r.status, 201);
  const [a, b] = [await launchPeer(server, { label: "alice", noWebrtc: true }), await launchPeer(server, { label: "viewer", noWebrtc: true })];
  // A short delivery bound: without the viewer's acks, alice's sends would reject after 5 s.
  const aId = await join(a.page, await server.token(room, "alice"), /** @type {any} */ ({ video: false, audio: false, deliveryTimeoutMs: 5000 }));
  const bId = await join(b.page, r.body.token, { video: false, audio: false });
  await Promise.all([waitPeers(a.page, 1), waitPeers(b.page, 1)]);
  const refused = await evaluate(b.page, async () => {
    try {
      await /** @type {any} */ (window).room.sendMessage("nope", 1);
      return "sent";
    } catch (e) {
      return `${/** @type {Error} */ (e).name} ${/** @type {any} */ (e).code}`;
    }
  }, undefined, "the viewer's send");
  assert.equal(refused, "ForbiddenError permission_denied");
  const delivered = await evaluate(a.page, async (to) => {
    const room = /** @type {any} */ (window).room;
    const all = [];
    for (let i = 0; i < 20; i++) all.push(room.sendMessage("n", i, { to }));
    return (await Promise.allSettled(all)).filter((s) => s.status === "fulfilled").length;
  }, bId, "alice's sends to the viewer");
  assert.equal(delivered, 20, "every send to the viewer was acknowledged");
  await expectAll(b.page, aId, 20, "n");
  assert.deepEqual((await received(a.page)).filter((/** @type {any} */ m) => m.type === "nope"), [], "nothing went out");
  await expectEvents([a, b]);
});

test("callBtn: media starts on the first click and the second hangs up; messages flow throughout", async () => {
  const room = await server.room();
  const [a, b] = [await classicPeer("alice"), await classicPeer("bob")];
  for (const [p, who] of [[a, "alice"], [b, "bob"]]) {
    await p.page.evaluate(() => {
      const btn = document.createElement("button");
      btn.id = "call";
      document.body.appendChild(btn);
    });
    await evaluate(p.page, (t) => /** @type {any} */ (window).start({ token: t, callBtn: "call" }), await server.token(room, /** @type {string} */ (who)), `join ${who}`);
  }
  await waitFor(() => evaluate(a.page, () => /** @type {any} */ (window).room.peers.length === 1, undefined, "peers"), "alice sees bob");
  const state = (/** @type {import("playwright-core").Page} */ page) => evaluate(page, () => {
    const remote = /** @type {HTMLVideoElement} */ (document.getElementById("remoteVideo"));
    const stream = /** @type {MediaStream | null} */ (remote.srcObject);
    const room = /** @type {any} */ (window).room;
    return {
      pressed: document.getElementById("call")?.getAttribute("aria-pressed"),
      local: room.local ? room.local.getTracks().map((/** @type {MediaStreamTrack} */ t) => t.readyState) : null,
      remoteVideo: stream ? stream.getVideoTracks().filter((t) => t.readyState === "live").length : 0,
      playing: remote.readyState >= 2 && !!stream,
    };
  }, undefined, "the call's state");
  // Before any click: joined, no media, messages flow.
  assert.deepEqual(await state(a.page), { pressed: "false", local: null, remoteVideo: 0, playing: false });
  await a.page.click("#share");
  await waitFor(async () => (await evaluate(b.page, () => /** @type {any} */ (window).got.length, undefined, "got")) === 1, "a message before the call");
  // Alice starts the call: bob sees her.
  await a.page.click("#call");
  await waitFor(async () => (await state(a.page)).pressed === "true", "alice's button pressed");
  await waitFor(async () => (await state(b.page)).playing, "alice's video playing at bob");
  // Alice hangs up: her tracks stop, her video at bob ends; messages still flow.
  await a.page.click("#call");
  await waitFor(async () => (await state(a.page)).pressed === "false", "alice's button released");
  assert.equal((await state(a.page)).local, null);
  await waitFor(async () => (await state(b.page)).remoteVideo === 0, "alice's video gone at bob");
  await a.page.click("#draw");
  await waitFor(async () => (await evaluate(b.page, () => /** @type {any} */ (window).got.length, undefined, "got")) === 2, "a message after the call");
  // And again: a second call works.
  await a.page.click("#call");
  await waitFor(async () => (await state(b.page)).playing && (await state(b.page)).remoteVideo === 1, "alice's video again at bob");
  await expectEvents([a, b]);
});

/**
 * The width of the video a page decodes from a peer (0 before any frame).
 * @param {import("playwright-core").Page} page
 * @param {string} from
 */
const inboundWidth = (page, from) => evaluate(page, async (id) => {
  const pc = /** @type {any} */ (window).room.remotes.get(id)?.link?.pc;
  if (!pc) return 0;
  let width = 0;
  (await pc.getStats()).forEach((/** @type {any} */ s) => {
    if (s.type === "inbound-rtp" && s.kind === "video" && s.framesDecoded > 0) width = s.frameWidth ?? 0;
  });
  return width;
}, from, "inbound video width");

test("screen share: without a camera it still reaches peers, and a peer joining during a share gets the screen", async () => {
  const room = await server.room();
  const [a, b] = [await launchPeer(server, { label: "presenter" }), await launchPeer(server, { label: "viewer" })];
  // A presenter without a camera shares the screen: the viewer gets video.
  const aId = await join(a.page, await server.token(room, "presenter"), { video: false, audio: true });
  await join(b.page, await server.token(room, "viewer"));
  await waitPeers(a.page, 1);
  const screenWidth = await evaluate(a.page, async () => {
    const room = /** @type {any} */ (window).room;
    await room.shareScreen();
    return room.screenTrack.getSettings().width;
  }, undefined, "shareScreen without a camera");
  await waitFor(async () => (await inboundWidth(b.page, aId)) === screenWidth, "the screen at the viewer");
  // A presenter with a camera shares; a peer that joins during the share gets the screen, not
  // the camera.
  const room2 = await server.room();
  const [c, d] = [await launchPeer(server, { label: "presenter 2" }), await launchPeer(server, { label: "late joiner" })];
  const cId = await join(c.page, await server.token(room2, "presenter2"));
  const sizes = await evaluate(c.page, async () => {
    const room = /** @type {any} */ (window).room;
    const camera = room.local.getVideoTracks()[0].getSettings().width;
    await room.shareScreen();
    return { camera, screen: room.screenTrack.getSettings().width };
  }, undefined, "shareScreen with a camera");
  assert.notEqual(sizes.camera, sizes.screen, "the fake camera and screen differ in size (the check below needs it)");
  await join(d.page, await server.token(room2, "late"));
  await waitFor(async () => (await inboundWidth(d.page, cId)) === sizes.screen, "the screen at the late joiner");
  await expectEvents([a, b, c, d]);
});

test("remoteVideo follows its peer: a new stream after a relink and after a reload, never a frozen one", async () => {
  const room = await server.room();
  const [a, b] = [await classicPeer("alice"), await classicPeer("bob")];
  await evaluate(a.page, (t) => /** @type {any} */ (window).start({ token: t }), await server.token(room, "alice"), "join alice");
  const aId = await evaluate(b.page, (t) => /** @type {any} */ (window).start({ token: t }), await server.token(room, "bob"), "join bob")
    .then(() => evaluate(a.page, () => /** @type {any} */ (window).room.self.id, undefined, "alice's id"));
  /** The live video track alice's #remoteVideo shows now, or "": a number per track object
   * (a new peer connection's track may carry the same id as the one it replaces: the id comes
   * from the sender's track when the receiving side did not add its own first). */
  const shown = () => evaluate(a.page, () => {
    const v = /** @type {HTMLVideoElement} */ (document.getElementById("remoteVideo"));
    const track = /** @type {MediaStream | null} */ (v.srcObject)?.getVideoTracks()[0];
    if (!track || track.readyState !== "live" || track.muted || v.readyState < 2) return "";
    /** @type {any} */
    const w = window;
    w.trackNumbers ??= new WeakMap();
    if (!w.trackNumbers.has(track)) w.trackNumbers.set(track, `track ${(w.tracksSeen = (w.tracksSeen ?? 0) + 1)}`);
    return w.trackNumbers.get(track);
  }, undefined, "the shown track");
  const first = await waitFor(shown, "bob's video in alice's #remoteVideo");
  // Bob's peer connection to alice is replaced (a relink): the element takes the new stream.
  await evaluate(b.page, (id) => /** @type {any} */ (window).room._test.closeChannel(id), aId, "close bob's channel");
  const second = await waitFor(async () => {
    const t = await shown();
    return t && t !== first ? t : null;
  }, "bob's new stream after the relink");
  // Bob reloads the page and joins again: the element shows the new peer's stream.
  await b.page.reload();
  await b.page.setContent(PAGE, { waitUntil: "load" });
  await evaluate(b.page, (t) => /** @type {any} */ (window).start({ token: t }), await server.token(room, "bob"), "bob joins again");
  await waitFor(async () => {
    const t = await shown();
    return t && t !== second ? t : null;
  }, "the reloaded bob's stream");
  await expectEvents([a, b]);
});

test("a classic page joins end-to-end encrypted: JoinRoom with getToken and e2ee, inline sendMessage sealed", async () => {
  const room = await server.room();
  const [a, b] = [await classicPeer("alice"), await classicPeer("bob")];
  const key = "classic-room-key-0123456789abcdefghij";
  for (const p of [a, b]) await p.page.exposeFunction("mintToken", (/** @type {string} */ r, /** @type {string} */ u) => server.token(r, u));
  const start = (/** @type {import("playwright-core").Page} */ page, /** @type {string} */ user) => evaluate(page, ({ room, user, key }) => /** @type {any} */ (window).start({
    roomName: room, userId: user, e2ee: { key },
    getToken: (/** @type {{roomName: string, userId: string}} */ c) => /** @type {any} */ (window).mintToken(c.roomName, c.userId),
  }), { room, user, key }, "JoinRoom with e2ee");
  const aId = await start(a.page, "alice");
  await start(b.page, "bob");
  await waitPeers(b.page, 1);
  assert.equal(await evaluate(b.page, () => /** @type {any} */ (window).room.e2ee, undefined, "room.e2ee"), true);
  await b.page.click("#draw");
  const got = await waitFor(async () => {
    const g = await evaluate(a.page, () => /** @type {any} */ (window).got, undefined, "got");
    return g.length >= 1 ? g : null;
  }, "the drawing at alice");
  assert.deepEqual(got, [{ type: "changedDrawing", data: { circles: [{ x: 1 }], bgColor: "blue" }, from: await evaluate(b.page, () => /** @type {any} */ (window).room.self.id, undefined, "id") }]);
  assert.ok((await evaluate(a.page, () => /** @type {any} */ (window).room.e2eeStats.opened, undefined, "opened")) >= 1);
  assert.equal(typeof aId, "string");
  await expectEvents([a, b]);
});
