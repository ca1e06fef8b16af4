// @ts-check
// This peer's media as the app controls it, in real headless Chromium (fake camera and
// microphone) against a real server: the token's media permissions, the camera turned off and
// on (its track stopped, not only disabled), another camera without renegotiation, and the
// app's own stream.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TestServer, launchPeer, join, waitFor, waitPeers, evaluate, expectEvents, endTest, stopAll, videoStats,
  received, pathTo,
} from "./harness.js";

/** @type {TestServer} */
let server;

before(async () => {
  server = await TestServer.start();
});
afterEach(endTest);
after(stopAll);

/** @param {string} label */
const peer = (label) => launchPeer(server, { label });

/**
 * A token with these permissions.
 * @param {string} room
 * @param {string} identity
 * @param {Record<string, boolean>} permissions
 */
async function tokenWith(room, identity, permissions) {
  const r = await server.api("POST", `/v1/rooms/${room}/tokens`, { identity, name: identity, permissions });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return /** @type {string} */ (r.body.token);
}

/**
 * Counts the page's getUserMedia calls (`window.gum`), from before the SDK runs.
 * @param {import("playwright-core").Page} page
 */
const countCameraOpens = (page) => evaluate(page, () => {
  const w = /** @type {any} */ (window);
  const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  w.gum = 0;
  navigator.mediaDevices.getUserMedia = (c) => {
    w.gum++;
    return open(c);
  };
}, undefined, "count getUserMedia");

/**
 * RTP bytes a page's connection to a peer sent and received, by kind.
 * @param {import("playwright-core").Page} page
 * @param {string} peerId
 */
const rtp = (page, peerId) => evaluate(page, async (id) => {
  const pc = /** @type {any} */ (window).room.remotes.get(id)?.link?.pc;
  const out = { sent: 0, received: 0 };
  if (!pc) return out;
  (await pc.getStats()).forEach((/** @type {any} */ s) => {
    if (s.type === "outbound-rtp") out.sent += s.bytesSent ?? 0;
    if (s.type === "inbound-rtp") out.received += s.bytesReceived ?? 0;
  });
  return out;
}, peerId, "RTP stats");

/**
 * Offers made so far by a page's connection to a peer (renegotiations show as more).
 * @param {import("playwright-core").Page} page
 * @param {string} peerId
 */
const offers = (page, peerId) => evaluate(page, (id) => /** @type {any} */ (window).room.remotes.get(id)?.link?.offers ?? -1, peerId, "offers");

test("a token without publishMedia opens no camera and sends no media; one without subscribeMedia gets none; messages flow for both", async () => {
  const room = await server.room();
  const [a, b, c] = [await peer("no publish"), await peer("both"), await peer("no subscribe")];
  await countCameraOpens(a.page);
  const aId = await join(a.page, await tokenWith(room, "a", { publishMedia: false }));
  const bId = await join(b.page, await server.token(room, "b"));
  const cId = await join(c.page, await tokenWith(room, "c", { subscribeMedia: false }));
  for (const [p, others] of [[a, [bId, cId]], [b, [aId, cId]], [c, [aId, bId]]]) {
    await waitPeers(/** @type {any} */ (p).page, 2);
    for (const id of /** @type {string[]} */ (others)) {
      await waitFor(async () => (await pathTo(/** @type {any} */ (p).page, id)) === "p2p", `the data channel of ${/** @type {any} */ (p).label}`);
    }
  }
  // Media flows where it may: b and c to a, c to b.
  await waitFor(async () => (await videoStats(a.page, bId)).frames > 0 && (await videoStats(a.page, cId)).frames > 0, "video at a");
  await waitFor(async () => (await videoStats(b.page, cId)).frames > 0, "c's video at b");
  // … and long enough for anything else to have shown.
  await new Promise((resolve) => setTimeout(resolve, 3000));
  assert.equal(await evaluate(a.page, () => /** @type {any} */ (window).gum, undefined, "gum"), 0);
  assert.equal(await evaluate(a.page, () => /** @type {any} */ (window).room.local, undefined, "a's media"), null);
  for (const id of [bId, cId]) assert.equal((await rtp(a.page, id)).sent, 0, "a sends no media");
  for (const id of [aId, bId]) assert.equal((await rtp(c.page, id)).received, 0, "c receives no media");
  assert.equal(await evaluate(c.page, () => /** @type {any} */ (window).t.streams, undefined, "c's streams"), 0);
  assert.ok((await rtp(c.page, bId)).sent > 0, "c sends its media");
  const refused = await evaluate(a.page, async () => {
    const room = /** @type {any} */ (window).room;
    const out = [];
    for (const f of [() => room.setVideoEnabled(true), () => room.shareScreen(), () => room.setCamera("x")]) {
      try {
        await f();
        out.push("done");
      } catch (e) {
        out.push(`${/** @type {Error} */ (e).name} ${/** @type {any} */ (e).code}`);
      }
    }
    await room.sendMessage("hi", "from a");
    return out;
  }, undefined, "what a may not do, and a message");
  assert.deepEqual(refused, Array(3).fill("ForbiddenError permission_denied"));
  await evaluate(c.page, () => /** @type {any} */ (window).room.sendMessage("hi", "from c"), undefined, "c sends");
  await waitFor(async () => (await received(b.page)).length >= 2, "both messages at b");
  assert.equal(await evaluate(a.page, () => /** @type {any} */ (window).gum, undefined, "gum"), 0);
  await expectEvents([a, b, c]);
});

test("setVideoEnabled(false) stops the camera's track, true sends a new one the others see, setCamera switches devices, none of them renegotiating", async () => {
  const room = await server.room();
  const [a, b] = [await peer("alice"), await peer("bob")];
  const aId = await join(a.page, await server.token(room, "alice"));
  const bId = await join(b.page, await server.token(room, "bob"));
  await waitFor(async () => (await videoStats(b.page, aId)).frames > 0, "alice's video at bob");
  // (Once the media offer and answer are done.)
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const before = (await offers(a.page, bId)) + (await offers(b.page, aId));
  const off = await evaluate(a.page, async () => {
    const w = /** @type {any} */ (window);
    w.oldTrack = w.room.local.getVideoTracks()[0];
    await w.room.setVideoEnabled(false);
    return { old: w.oldTrack.readyState, video: w.room.local.getVideoTracks().length, enabled: w.room.videoEnabled };
  }, undefined, "camera off");
  assert.deepEqual(off, { old: "ended", video: 0, enabled: false });
  const framesOff = (await videoStats(b.page, aId)).frames;
  await new Promise((resolve) => setTimeout(resolve, 1500));
  assert.ok((await videoStats(b.page, aId)).frames - framesOff <= 2, "no frames while the camera is off");
  const on = await evaluate(a.page, async () => {
    const w = /** @type {any} */ (window);
    await w.room.setVideoEnabled(true);
    const track = w.room.local.getVideoTracks()[0];
    return { live: track?.readyState, fresh: track !== w.oldTrack, enabled: w.room.videoEnabled };
  }, undefined, "camera on");
  assert.deepEqual(on, { live: "live", fresh: true, enabled: true });
  const framesOn = (await videoStats(b.page, aId)).frames;
  await waitFor(async () => (await videoStats(b.page, aId)).frames > framesOn + 10, "alice's video again at bob");
  const switched = await evaluate(a.page, async () => {
    const w = /** @type {any} */ (window);
    const cams = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
    const mics = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audioinput");
    const cam = cams[cams.length - 1].deviceId;
    const mic = mics[mics.length - 1].deviceId;
    const oldCam = w.room.local.getVideoTracks()[0];
    await w.room.setCamera(cam);
    await w.room.setMicrophone(mic);
    return {
      cam: w.room.local.getVideoTracks()[0].getSettings().deviceId === cam,
      mic: w.room.local.getAudioTracks()[0].getSettings().deviceId === mic,
      tracks: w.room.local.getTracks().length,
      oldStopped: oldCam.readyState === "ended",
    };
  }, undefined, "another camera and microphone");
  assert.deepEqual(switched, { cam: true, mic: true, tracks: 2, oldStopped: true });
  const framesSwitched = (await videoStats(b.page, aId)).frames;
  await waitFor(async () => (await videoStats(b.page, aId)).frames > framesSwitched + 10, "the other camera's video at bob");
  assert.equal((await offers(a.page, bId)) + (await offers(b.page, aId)), before, "no renegotiation");
  await expectEvents([a, b]);
});

test("localStream: the app's own stream is sent instead of the camera, and leaving leaves it running", async () => {
  const room = await server.room();
  const [a, b] = [await peer("app stream"), await peer("viewer")];
  await countCameraOpens(a.page);
  const aId = await evaluate(a.page, async (token) => {
    const sdk = await import("/sdk/bluecam.js");
    const w = /** @type {any} */ (window);
    const canvas = document.createElement("canvas");
    canvas.width = 160;
    canvas.height = 120;
    const ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
    let n = 0;
    w.painter = setInterval(() => {
      ctx.fillStyle = `hsl(${(n += 10) % 360} 80% 50%)`;
      ctx.fillRect(0, 0, 160, 120);
    }, 50);
    w.appStream = canvas.captureStream(20);
    w.room = await sdk.joinRoom({ token, localStream: w.appStream });
    return w.room.self.id;
  }, await server.token(room, "app"), "joinRoom with the app's stream");
  await join(b.page, await server.token(room, "viewer"));
  await waitFor(async () => (await videoStats(b.page, aId)).frames > 5, "the app's video at the viewer");
  const after = await evaluate(a.page, () => {
    const w = /** @type {any} */ (window);
    w.room.leave();
    return { gum: w.gum, track: w.appStream.getVideoTracks()[0].readyState };
  }, undefined, "leave");
  assert.deepEqual(after, { gum: 0, track: "live" });
  await expectEvents([a, b]);
});
