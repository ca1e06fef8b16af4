// @ts-check
// The SDK as a web developer adopts it: `npm pack` of sdk/js, installed into a fresh copy of
// examples/react-vite, type-checked under --strict against the published declarations, bundled
// with Vite and with esbuild, and run in real Chromium from the app's own origin against a
// real server; and examples/plain-html, which takes the SDK from the server, run the same way.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join, extname, normalize } from "node:path";
import { TestServer, launchPeer, waitFor, evaluate, expectEvents, endTest, stopAll } from "./harness.js";

const ROOT = new URL("../../", import.meta.url).pathname;
const NPM = process.platform === "win32" ? "npm.cmd" : "npm";

/** @type {TestServer} */
let server;
/** The fresh app: the packed SDK installed, built with Vite (`dist`) and esbuild (`dist-esbuild`). */
let app = "";

/**
 * Runs a command in `cwd`, its output shown only if it fails.
 * @param {string} cmd
 * @param {string[]} args
 * @param {string} cwd
 * @param {Record<string, string>} [env]
 */
function run(cmd, args, cwd, env = {}) {
  try {
    return execFileSync(cmd, args, { cwd, env: { ...process.env, ...env }, encoding: "utf8", stdio: "pipe", timeout: 300000 });
  } catch (e) {
    const err = /** @type {any} */ (e);
    throw new Error(`${cmd} ${args.join(" ")} in ${cwd} failed:\n${err.stdout ?? ""}\n${err.stderr ?? ""}`);
  }
}

before(async () => {
  server = await TestServer.start();
  const tmp = mkdtempSync(join(tmpdir(), "bluecam-package-"));
  run(NPM, ["pack", "--pack-destination", tmp], join(ROOT, "sdk/js"));
  const pkg = JSON.parse(readFileSync(join(ROOT, "sdk/js/package.json"), "utf8"));
  const tarball = join(tmp, `${pkg.name}-${pkg.version}.tgz`);
  app = join(tmp, "app");
  cpSync(join(ROOT, "examples/react-vite"), app, { recursive: true, filter: (p) => !p.includes("node_modules") && !p.includes("/dist") });
  // The example depends on the SDK in this repository; the fresh app on what npm pack made,
  // with the same versions of everything else as the repository's lock (from npm's cache).
  const manifest = JSON.parse(readFileSync(join(app, "package.json"), "utf8"));
  manifest.dependencies.bluecam = `file:${tarball}`;
  const lock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8"));
  manifest.devDependencies.esbuild = lock.packages["node_modules/esbuild"].version;
  manifest.devDependencies.typescript = lock.packages["node_modules/typescript"].version;
  writeFileSync(join(app, "package.json"), JSON.stringify(manifest, null, 2));
  run(NPM, ["install", "--prefer-offline", "--no-audit", "--no-fund"], app);
  // Development builds: React's StrictMode then mounts every component twice, as in `vite dev`.
  run(join(app, "node_modules/.bin/vite"), ["build"], app, { NODE_ENV: "development" });
  run(join(app, "node_modules/.bin/esbuild"), [
    "src/main.jsx", "--bundle", "--format=esm", "--jsx=automatic", "--define:process.env.NODE_ENV=\"development\"",
    "--outfile=dist-esbuild/app.js",
  ], app);
  writeFileSync(join(app, "dist-esbuild/index.html"), readFileSync(join(app, "index.html"), "utf8").replace("/src/main.jsx", "/app.js"));
});
afterEach(endTest);
after(async () => {
  await stopAll();
  if (app) rmSync(join(app, ".."), { recursive: true, force: true });
});

/**
 * A static file server for a directory: the app's own origin.
 * @param {string} dir
 * @returns {Promise<{url: string, close: () => Promise<void>}>}
 */
function serveDir(dir) {
  const types = /** @type {Record<string, string>} */ ({ ".html": "text/html", ".js": "text/javascript", ".css": "text/css" });
  const http = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname)).replace(/^(\.\.[/\\])+/, "");
    if (path === "/blank") {
      // (Where a page waits before it goes to the app: nothing runs.)
      res.writeHead(200, { "content-type": "text/html" }).end("<!doctype html>");
      return;
    }
    let file = join(dir, path);
    if (!existsSync(file) || statSync(file).isDirectory()) file = join(dir, "index.html");
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
    res.end(readFileSync(file));
  });
  return new Promise((resolve) => {
    http.listen(0, "127.0.0.1", () => {
      const addr = /** @type {import("node:net").AddressInfo} */ (http.address());
      resolve({ url: `http://127.0.0.1:${addr.port}`, close: () => new Promise((done) => http.close(() => done(undefined))) });
    });
  });
}

/**
 * A page of an app served from `origin`, on `?server=…&token=…`.
 * @param {string} origin
 * @param {string} token
 * @param {string} label
 */
async function appPage(origin, token, label) {
  const p = await launchPeer(/** @type {any} */ ({ url: origin }), { label, path: "/blank" });
  // Counts the joins cancelled (StrictMode's first mount), from before the app runs.
  await p.page.addInitScript(() => {
    const abort = AbortController.prototype.abort;
    /** @type {any} */ (window).aborts = 0;
    AbortController.prototype.abort = function (reason) {
      /** @type {any} */ (window).aborts++;
      return abort.call(this, reason);
    };
  });
  await p.page.goto(`${origin}/?server=${encodeURIComponent(server.url)}&token=${encodeURIComponent(token)}`);
  return p;
}

/** @param {import("playwright-core").Page} page @param {string} selector */
const texts = (page, selector) => evaluate(page, (s) => [...document.querySelectorAll(s)].map((e) => e.textContent ?? ""), selector, selector);

test("the packed package type-checks under --strict in a fresh app: events typed, internals hidden, a token required", () => {
  writeFileSync(join(app, "check.ts"), `
import { joinRoom, CLOSE, BlueCamError, type Room } from "bluecam";
import { CLOSE_CODES } from "bluecam/close-codes";
import type {} from "bluecam/global";

export async function main(server: string, token: string): Promise<Room> {
  const room = await joinRoom({ server, token, signal: new AbortController().signal });
  const off = room.on("message", (type, data, from, meta) => {
    const who: string = from.identity;
    const path: "p2p" | "relay" = meta.path;
    console.log(type.length, who, path, data);
  });
  off();
  room.on("connectionChange", (state) => console.log(state satisfies "connecting" | "connected" | "reconnecting" | "disconnected"));
  room.on("error", (e) => {
    if (e instanceof BlueCamError) console.log(e.code satisfies string);
  });
  // @ts-expect-error: no such event
  room.on("mesage", () => {});
  // @ts-expect-error: a handler with another event's arguments
  room.on("peerJoined", (type: string, data: unknown) => console.log(type, data));
  // @ts-expect-error: the internals are not part of the API
  console.log(room.scheduler);
  // @ts-expect-error: a token (or roomName, userId and getToken) is required
  await joinRoom({ server });
  await joinRoom({ server, roomName: "r", userId: "u", getToken: async ({ roomName, userId }) => roomName + userId });
  await room.sendMessage("photo", new Uint8Array([1, 2]));
  await room.setVideoEnabled(false);
  console.log(CLOSE.superseded satisfies number, CLOSE_CODES.length);
  const classic: Promise<Room> = window.JoinRoom({ server, token });
  const sent: Promise<boolean> = window.sendMessage("t", 1);
  console.log(classic, sent, window.BlueCam.ready);
  return room;
}
`);
  // (No skipLibCheck: the published declarations themselves must check.)
  run(process.execPath, [join(app, "node_modules/typescript/bin/tsc"), "--strict", "--noEmit", "--module", "esnext",
    "--moduleResolution", "bundler", "--target", "es2022", "--lib", "es2022,dom,dom.iterable", "check.ts"], app);
});

for (const [bundler, dist] of [["Vite", "dist"], ["esbuild", "dist-esbuild"]]) {
  test(`the React example bundled with ${bundler}, from its own origin: StrictMode's double mount is invisible to the others, messages flow, unmounting leaves`, async () => {
    const site = await serveDir(join(app, dist));
    try {
      const room = await server.room();
      const a = await appPage(site.url, await server.token(room, "alice"), "alice");
      await waitFor(async () => (await texts(a.page, "#state"))[0]?.startsWith("connected as alice"), "alice in the room");
      const b = await appPage(site.url, await server.token(room, "bob"), "bob");
      await waitFor(async () => (await texts(b.page, "#peers li")).includes("alice"), "bob sees alice");
      await waitFor(async () => (await texts(a.page, "#peers li")).includes("bob"), "alice sees bob");
      await b.page.fill("#text", "hello from bob");
      await b.page.click("#send");
      await waitFor(async () => (await texts(a.page, "#messages li")).includes("bob: hello from bob"), "the message at alice");
      // Unmounted: the hook leaves, and alice sees bob go.
      await b.page.click("#toggle");
      await waitFor(async () => (await texts(a.page, "#seen li")).includes("left bob"), "bob's leave at alice");
      // StrictMode mounted bob's room twice (the first join cancelled); alice saw one join
      // and one leave, nothing more.
      assert.ok(await evaluate(b.page, () => /** @type {any} */ (window).aborts, undefined, "aborts") >= 1);
      assert.deepEqual(await texts(a.page, "#seen li"), ["joined bob", "left bob"]);
      await expectEvents([a, b]);
    } finally {
      await site.close();
    }
  });
}

test("the plain HTML example takes the SDK from the server, joins and chats", async () => {
  const site = await serveDir(join(ROOT, "examples/plain-html"));
  try {
    const room = await server.room();
    const a = await appPage(site.url, await server.token(room, "alice"), "alice");
    const b = await appPage(site.url, await server.token(room, "bob"), "bob");
    for (const [p, name] of /** @type {const} */ ([[a, "alice"], [b, "bob"]])) {
      await waitFor(async () => (await texts(p.page, "#state"))[0] === `connected as ${name}`, `${name} in the room`);
    }
    await waitFor(async () => (await texts(a.page, "#others video")).length === 1, "bob's video at alice");
    await b.page.fill("#text", "hi alice");
    await b.page.click("#send");
    await waitFor(async () => (await texts(a.page, "#messages li")).includes("bob: hi alice"), "the message at alice");
  } finally {
    await site.close();
  }
});
