// @ts-check
// Real networks: TURN through a real coturn with relay-only browsers.
import { test, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TestServer, Coturn, launchPeer, join, waitFor, expectEvents, endTestAndServers, stopAll, videoStats,
  received, pathTo, evaluate,
} from "./harness.js";

afterEach(endTestAndServers);
after(stopAll);

test("relay-only browsers: video and the data channel through coturn with per-session credentials", async () => {
  const secret = "turn-secret-" + Math.random().toString(36).slice(2);
  const turn = await Coturn.start(secret);
  try {
    // TURN set from the environment alone, as in a container.
    const server = await TestServer.start([], {
      BLUECAM_TURN_URLS: `turn:127.0.0.1:${turn.port}?transport=udp`,
      BLUECAM_TURN_SECRET: secret,
    });
    const room = await server.room();
    const [a, b] = [await launchPeer(server, { label: "alice" }), await launchPeer(server, { label: "bob" })];
    const opts = { video: true, audio: true, iceTransportPolicy: /** @type {const} */ ("relay") };
    const aId = await join(a.page, await server.token(room, "alice"), opts);
    const bId = await join(b.page, await server.token(room, "bob"), opts);
    const ice = await evaluate(a.page, () => /** @type {any} */ (window).room.iceServers, undefined, "the ICE servers");
    const turnEntry = ice.find((/** @type {any} */ s) => s.urls.some((/** @type {string} */ u) => u.startsWith("turn:")));
    assert.ok(turnEntry?.username?.endsWith(`:${aId}`), `per-session TURN credentials: ${JSON.stringify(ice)}`);
    for (const [page, other] of [[a.page, bId], [b.page, aId]]) {
      const s = await waitFor(async () => {
        const v = await videoStats(/** @type {any} */ (page), /** @type {string} */ (other));
        return v.frames > 0 && v.local ? v : null;
      }, "decoded video frames through the relay");
      assert.equal(s.local, "relay", "the local candidate of the selected pair is a TURN relay");
      assert.equal(s.remote, "relay", "and so is the remote one");
    }
    await waitFor(async () => (await pathTo(a.page, bId)) === "p2p" && (await pathTo(b.page, aId)) === "p2p", "the data channel");
    await evaluate(a.page, async () => {
      await /** @type {any} */ (window).room.sendMessage("hello", { through: "turn" });
    }, undefined, "sendMessage");
    const got = await waitFor(async () => {
      const r = await received(b.page);
      return r.length >= 1 ? r : null;
    }, "the message");
    assert.deepEqual(got, [{ type: "hello", data: { through: "turn" }, from: aId, path: "p2p" }]);
    await expectEvents([a, b]);
  } finally {
    await turn.stop();
  }
});
