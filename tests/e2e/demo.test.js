// @ts-check
// The demo at `/`, driven as a person would: create a room, join through the invite link in a
// second browser, draw a circle on one board and see it on the other.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TestServer, launchPeer, waitFor, evaluate, ensureArtifacts, ARTIFACTS, expectEvents, endTest, stopAll, DEADLINE_MS,
} from "./harness.js";

/** @type {TestServer} */
let server;

before(async () => {
  server = await TestServer.start();
});
afterEach(endTest);
after(stopAll);

test("two pages create and join a room through the invite link and share a drawing", async () => {
  // The link the server printed at start (the default demo serves only browsers that opened it).
  const demo = await server.demoPath();
  const host = await launchPeer(server, { path: demo, label: "host" });
  await host.page.setViewportSize({ width: 1100, height: 800 });
  await host.page.fill("#name", "Host");
  await host.page.click("#start");
  await host.page.waitForSelector("body[data-state=joined]", { timeout: DEADLINE_MS });
  const invite = await evaluate(host.page, () => location.href, undefined, "location.href");
  // A demo room id: "demo-", 12 random characters and a 20-character MAC (docs/configuration.md),
  // and the room's end-to-end key in the fragment (32 random bytes, base64url), which the
  // browser never sends to the server.
  assert.match(invite, /\?room=demo-[A-Za-z0-9_-]{32}#k=[A-Za-z0-9_-]{43}$/);

  // The guest opens the invite link on a phone-sized window (its own context: like another
  // browser on this machine, nothing shared with the host's, so it opens it with the demo's
  // key, as from the start line).
  const key = new URL(demo, server.url).searchParams.get("demo");
  const link = new URL(invite);
  const guest = await launchPeer(server, { path: link.pathname + link.search + `&demo=${key}` + link.hash, label: "guest" });
  await guest.page.setViewportSize({ width: 390, height: 844 });
  await guest.page.fill("#name", "Guest");
  await guest.page.click("#start");
  await guest.page.waitForSelector("body[data-state=joined]", { timeout: DEADLINE_MS });

  // Each sees the other, and the badge says p2p once the data channel is up; both show the
  // lock (the room is end-to-end encrypted with the link's key).
  await host.page.waitForSelector("#peers [data-path=p2p]", { timeout: DEADLINE_MS });
  await guest.page.waitForSelector("#peers [data-path=p2p]", { timeout: DEADLINE_MS });
  for (const p of [host, guest]) {
    assert.equal(await p.page.isVisible("#lock"), true, `${p.label}: the lock`);
    assert.equal(await evaluate(p.page, () => /** @type {any} */ (window).bluecamDemo.room.e2ee, undefined, "room.e2ee"), true);
  }

  const board = await host.page.locator("#board").boundingBox();
  assert.ok(board);
  await host.page.mouse.click(board.x + board.width * 0.3, board.y + board.height * 0.4);
  const drawing = await waitFor(
    () => guest.page.evaluate(() => {
      const d = /** @type {any} */ (window).bluecamDemo?.getDrawing();
      return d && d.circles.length === 1 ? d : null;
    }),
    "the circle on the guest's board",
  );
  assert.ok(Math.abs(drawing.circles[0].x - 0.3) < 0.05, JSON.stringify(drawing.circles[0]));
  assert.ok(Math.abs(drawing.circles[0].y - 0.4) < 0.05, JSON.stringify(drawing.circles[0]));

  // Remote video plays on both sides.
  for (const p of [host, guest]) {
    await waitFor(
      () => p.page.evaluate(() => {
        const v = /** @type {HTMLVideoElement | null} */ (document.querySelector("#remotes video"));
        return !!v && v.videoWidth > 0;
      }),
      "remote video",
    );
  }

  ensureArtifacts();
  await host.page.screenshot({ path: `${ARTIFACTS}demo-host.png`, timeout: DEADLINE_MS });
  await guest.page.screenshot({ path: `${ARTIFACTS}demo-guest.png`, timeout: DEADLINE_MS });
  // The server crashes and comes back: both pages say "Reconnecting…" meanwhile, then carry
  // on in the same call (same peers, the board still shared).
  const banner = (/** @type {import("playwright-core").Page} */ page) =>
    page.evaluate(() => !(/** @type {HTMLElement} */ (document.getElementById("reconnecting"))).hidden);
  const restarting = server.restart("SIGKILL", 1500);
  for (const p of [host, guest]) await waitFor(() => banner(p.page), "the reconnecting bar");
  await restarting;
  for (const p of [host, guest]) await waitFor(async () => !(await banner(p.page)), "the bar to go");
  for (const p of [host, guest]) {
    assert.equal(await p.page.locator("#peers li").count(), 1, "still the same two in the call");
  }
  await host.page.mouse.click(board.x + board.width * 0.6, board.y + board.height * 0.6);
  await waitFor(
    () => guest.page.evaluate(() => /** @type {any} */ (window).bluecamDemo?.getDrawing().circles.length === 2),
    "the second circle on the guest's board",
  );
  // The demo's joins went through the recording SDK too: no error, no gap.
  await expectEvents([host, guest]);
});
