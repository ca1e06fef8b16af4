// BlueCam demo page: create or join a private room through the demo endpoints, then show video
// tiles, a peer list with each peer's delivery path (p2p | relay), a shared drawing board kept in
// sync with sendMessage("changedDrawing", state) and a text chat. It uses only the SDK's public API.

import { joinRoom } from "/sdk/bluecam.js";

/** @typedef {{id: string, identity: string, name?: string | null}} Peer */
/** @typedef {"p2p" | "relay"} Path */
/**
 * The part of the SDK's Room this page uses.
 * @typedef {{
 *   self: Peer, peers: Peer[], path(peerId: string): Path,
 *   sendMessage(type: string, data: unknown, options?: {to?: string}): Promise<unknown>,
 *   setAudioEnabled(on: boolean): unknown, setVideoEnabled(on: boolean): Promise<void>,
 *   readonly audioEnabled: boolean, readonly videoEnabled: boolean, readonly e2ee: boolean,
 *   shareScreen(): Promise<unknown>, stopScreenShare(): unknown, leave(): unknown,
 * }} Room
 */
/** @typedef {{x: number, y: number, r: number, color: string}} Circle */
/** @typedef {{x: number, y: number, w: number, h: number, color: string}} Rectangle */
/** @typedef {{x: number, y: number, size: number, color: string}} Triangle */
/** @typedef {{circles: Circle[], rectangles: Rectangle[], triangles: Triangle[], bgColor: string}} Drawing */
/** @typedef {{item: HTMLElement, badge: HTMLElement, label: HTMLElement}} PeerUi */

/** joinRoom failures that mean "this room cannot be joined", as opposed to "no camera". */
const ROOM_ERRORS = ["RoomNotFoundError", "UnauthorizedError", "ForbiddenError", "RoomFullError", "ConnectionError", "DemoApiError"];
/** getUserMedia failures: the SDK may report them through onError and join without media. */
const MEDIA_ERRORS = ["NotAllowedError", "NotFoundError", "NotReadableError", "OverconstrainedError", "SecurityError", "AbortError"];
/** @type {Record<string, string>} */
const JOIN_ERRORS = {
  UnauthorizedError: "The server refused the invitation. Please try again.",
  ForbiddenError: "You are not allowed into this room.",
  RoomFullError: "This room is full.",
};
const NOTICE_MS = 6000;
const DEFAULT_BG = "#ffffff";

// ------------------------------------------------------------------ elements and state

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @param {new () => T} type
 * @returns {T}
 */
function byId(id, type) {
  const el = document.getElementById(id);
  if (!(el instanceof type)) throw new Error(`demo page is missing #${id}`);
  return el;
}

const els = {
  notice: byId("notice", HTMLElement), reconnecting: byId("reconnecting", HTMLElement), landing: byId("landing", HTMLElement),
  gone: byId("gone", HTMLElement), room: byId("room", HTMLElement), invited: byId("invited", HTMLElement),
  startForm: byId("start-form", HTMLFormElement), name: byId("name", HTMLInputElement),
  start: byId("start", HTMLButtonElement), newRoom: byId("new-room", HTMLButtonElement),
  invite: byId("invite", HTMLInputElement), copy: byId("copy", HTMLButtonElement),
  lock: byId("lock", HTMLElement),
  local: byId("local", HTMLVideoElement),
  videos: byId("videos", HTMLElement), localTile: byId("local-tile", HTMLElement), remotes: byId("remotes", HTMLElement),
  mic: byId("mic", HTMLButtonElement), cam: byId("cam", HTMLButtonElement),
  share: byId("share", HTMLButtonElement), leave: byId("leave", HTMLButtonElement),
  bg: byId("bg", HTMLInputElement), clear: byId("clear", HTMLButtonElement), board: byId("board", HTMLCanvasElement),
  peers: byId("peers", HTMLUListElement), messages: byId("messages", HTMLOListElement),
  chatForm: byId("chat-form", HTMLFormElement), chatInput: byId("chat-input", HTMLInputElement),
};

/** @type {Room | null} */
let room = null;
let roomId = "";
let mediaOn = false;
let sharing = false;
/** @type {Map<string, PeerUi>} */
const peers = new Map();
/** @type {Drawing} */
let drawing = emptyDrawing();
/** Whether this page has drawn or received a drawing: a blank newcomer must not wipe others' boards. */
let drawingTouched = false;

/** @returns {Drawing} */
function emptyDrawing() {
  return { circles: [], rectangles: [], triangles: [], bgColor: DEFAULT_BG };
}

// ------------------------------------------------------------------ small helpers

/** @param {unknown} v @returns {v is Record<string, unknown>} */
function isObj(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** @param {unknown} e */
const errorName = (e) => (e instanceof Error ? e.name : "");
/** @param {unknown} e */
const errorText = (e) => (e instanceof Error ? e.message : String(e));
/** @param {Peer | null | undefined} peer */
const peerName = (peer) => (peer ? peer.name || peer.identity || peer.id : "Someone");
const urlRoomId = () => new URLSearchParams(location.search).get("room");
/** The room's end-to-end key: in the invite link's fragment (`#k=…`), which browsers never send
 * to a server, so BlueCam never sees it. */
const urlRoomKey = () => new URLSearchParams(location.hash.slice(1)).get("k");

/** A new room key: 32 random bytes, base64url. Null where the page cannot encrypt (WebCrypto
 * exists only on secure pages: https, or http://localhost). */
function newRoomKey() {
  if (!globalThis.crypto || !crypto.subtle) return null;
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** @param {string} text */
function showNotice(text, ms = NOTICE_MS) {
  els.notice.textContent = text;
  els.notice.hidden = false;
  window.setTimeout(() => {
    if (els.notice.textContent === text) els.notice.hidden = true;
  }, ms);
}

/** @param {"landing" | "gone" | "room"} view */
function showView(view) {
  els.landing.hidden = view !== "landing";
  els.gone.hidden = view !== "gone";
  els.room.hidden = view !== "room";
  document.body.dataset.state = view === "room" ? "joined" : view === "gone" ? "room-not-found" : "landing";
}

// ------------------------------------------------------------------ demo endpoints

class DemoApiError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.name = "DemoApiError";
    this.code = code;
  }
}

/** @param {string} path @param {object} body @returns {Promise<Record<string, unknown>>} */
async function postJson(path, body) {
  const res = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  /** @type {unknown} */
  const json = await res.json().catch(() => null);
  if (!res.ok) {
    /** @type {Record<string, unknown>} */
    const err = isObj(json) && isObj(json.error) ? json.error : {};
    const code = typeof err.code === "string" ? err.code : `http_${res.status}`;
    throw new DemoApiError(code, typeof err.message === "string" ? err.message : res.statusText);
  }
  return isObj(json) ? json : {};
}

/** Creates a room and puts its invite link in the address bar. @returns {Promise<string>} */
async function createRoom() {
  const json = await postJson("/demo/rooms", {});
  const id = isObj(json.room) ? json.room.id : undefined;
  if (typeof id !== "string") throw new Error("the server answered without a room id");
  const key = newRoomKey();
  const link = typeof json.invite === "string" ? json.invite : `/?room=${encodeURIComponent(id)}`;
  history.replaceState(null, "", key ? `${link}#k=${key}` : link);
  return id;
}

/** @param {string} id @param {string} name @returns {Promise<string>} */
async function mintToken(id, name) {
  const json = await postJson(`/demo/rooms/${encodeURIComponent(id)}/tokens`, { name });
  if (typeof json.token !== "string") throw new Error("the server answered without a token");
  return json.token;
}

// ------------------------------------------------------------------ joining and leaving

/** @param {string} id @param {string} name @param {boolean} media @returns {Promise<Room>} */
async function connect(id, name, media) {
  const key = urlRoomKey();
  return joinRoom({
    token: await mintToken(id, name),
    ...(key ? { e2ee: { key } } : {}),
    video: media,
    audio: media,
    localVideo: "#local",
    remoteVideos: "#remotes",
    /** @param {string} type @param {unknown} data @param {Peer | null | undefined} from @param {{path?: string}} [meta] */
    onMessage(type, data, from, meta) { handleMessage(type, data, from, meta && meta.path); },
    roomNotFoundCallback() { roomGone(); },
    /** @param {Peer} peer */
    onPeerJoined(peer) { addPeer(peer); sendDrawingTo(peer); },
    /** @param {Peer} peer */
    onPeerLeft(peer) { removePeer(peer.id); },
    /** @param {Peer} peer @param {Path} path */
    onPathChange(peer, path) { setPath(peer.id, path); },
    /** @param {unknown} error */
    onError(error) {
      if (!MEDIA_ERRORS.includes(errorName(error))) showNotice(`Connection problem: ${errorText(error)}`);
    },
    /** @param {string} state */
    onConnectionChange(state) { els.reconnecting.hidden = state !== "reconnecting"; },
  });
}

/**
 * Joins with camera and microphone, falling back to a data-only peer when they are unavailable.
 * @param {string} id @param {string} name @returns {Promise<Room>}
 */
async function joinWithFallback(id, name) {
  els.local.srcObject = null;
  /** @type {Room} */
  let joined;
  try {
    joined = await connect(id, name, true);
  } catch (e) {
    if (ROOM_ERRORS.includes(errorName(e))) throw e;
    console.warn("joining with camera failed, retrying data-only", e);
    joined = await connect(id, name, false);
  }
  // The SDK fills the local preview only when it got the camera and microphone.
  mediaOn = els.local.srcObject !== null;
  if (!mediaOn) showNotice("No camera or microphone available: you joined without video. Drawing and chat still work.", 10000);
  return joined;
}

/** @param {() => Promise<string>} pickRoom */
async function start(pickRoom) {
  els.start.disabled = els.newRoom.disabled = true;
  els.start.textContent = "Joining…";
  try {
    roomId = await pickRoom();
    room = await joinWithFallback(roomId, els.name.value.trim() || els.name.placeholder);
    for (const peer of room.peers) addPeer(peer);
    Object.assign(window, { bluecamDemo: { room, getDrawing: () => drawing } });
    els.lock.hidden = !room.e2ee;
    syncControls();
    showView("room");
    resizeBoard();
  } catch (e) {
    handleJoinError(e);
  } finally {
    els.start.disabled = els.newRoom.disabled = false;
    setupLanding();
  }
}

/** @param {unknown} e */
function handleJoinError(e) {
  room = null;
  const name = errorName(e);
  const code = e instanceof DemoApiError ? e.code : "";
  if (name === "RoomNotFoundError" || code === "room_not_found") return roomGone();
  showView("landing");
  showNotice(code === "not_found" ? "The demo is turned off on this server." : JOIN_ERRORS[name] || `Could not join: ${errorText(e)}`);
}

/** The room is missing or was deleted: offer a new one. */
function roomGone() {
  leaveQuietly();
  history.replaceState(null, "", "/");
  showView("gone");
}

function leave() {
  leaveQuietly();
  showView("landing");
  setupLanding();
}

function leaveQuietly() {
  const current = room;
  room = null;
  if (current) Promise.resolve(current.leave()).catch((/** @type {unknown} */ e) => console.warn("leave failed", e));
  peers.forEach((ui) => ui.label.remove());
  peers.clear();
  els.peers.replaceChildren();
  els.messages.replaceChildren();
  els.invite.hidden = true;
  els.local.srcObject = null;
  drawing = emptyDrawing();
  drawingTouched = false;
  els.bg.value = DEFAULT_BG;
  sharing = false;
  Object.assign(window, { bluecamDemo: undefined });
}

function setupLanding() {
  const invited = urlRoomId() !== null;
  els.invited.hidden = !invited;
  els.start.textContent = invited ? "Join room" : "New private room";
}

// ------------------------------------------------------------------ peers, paths and labels

/** @param {string} tag @param {string} className @param {string} [text] */
function make(tag, className, text = "") {
  const el = document.createElement(tag);
  el.className = className;
  el.textContent = text;
  return el;
}

/** @param {Peer} peer */
function addPeer(peer) {
  if (peers.has(peer.id)) return;
  const item = make("li", "peer");
  const badge = make("span", "badge");
  const label = make("span", "label remote-label", peerName(peer));
  item.dataset.peer = label.dataset.labelFor = peer.id;
  label.hidden = true;
  item.append(make("span", "peer-name", peerName(peer)), badge);
  els.peers.append(item);
  els.videos.append(label);
  peers.set(peer.id, { item, badge, label });
  setPath(peer.id, room ? room.path(peer.id) : "relay");
  placeLabels();
}

/** @param {string} id */
function removePeer(id) {
  const ui = peers.get(id);
  ui?.item.remove();
  ui?.label.remove();
  peers.delete(id);
}

/** @param {string} id @param {Path} path */
function setPath(id, path) {
  const ui = peers.get(id);
  if (!ui) return;
  ui.badge.textContent = ui.badge.dataset.path = path;
  ui.badge.title = path === "p2p" ? "Direct data channel" : "Relayed through the server";
}

/** The SDK owns the remote <video>s, so name labels float above them, matched by data-peer. */
function placeLabels() {
  /** @type {Map<string, HTMLVideoElement>} */
  const videos = new Map();
  els.remotes.querySelectorAll("video").forEach((v) => v.dataset.peer && videos.set(v.dataset.peer, v));
  peers.forEach((ui, id) => {
    const video = videos.get(id);
    ui.label.hidden = !video;
    if (!video) return;
    ui.label.style.left = `${video.offsetLeft + 8}px`;
    ui.label.style.top = `${video.offsetTop + video.offsetHeight - 8}px`;
  });
}

// ------------------------------------------------------------------ media controls and invite

/** @param {HTMLButtonElement} button @param {boolean} pressed @param {string} text */
function setToggle(button, pressed, text) {
  button.textContent = text;
  button.setAttribute("aria-pressed", String(pressed));
}

function syncControls() {
  for (const b of [els.mic, els.cam, els.share]) b.disabled = !room || !mediaOn;
  els.share.hidden = !(navigator.mediaDevices && "getDisplayMedia" in navigator.mediaDevices);
  const audio = room ? room.audioEnabled : false;
  const video = room ? room.videoEnabled : false;
  setToggle(els.mic, !audio, audio ? "Mute" : "Unmute");
  setToggle(els.cam, !video, video ? "Camera off" : "Camera on");
  setToggle(els.share, sharing, sharing ? "Stop sharing" : "Share screen");
  els.localTile.classList.toggle("off", !mediaOn || (!video && !sharing));
}

async function toggleShare() {
  if (!room) return;
  try {
    await (sharing ? room.stopScreenShare() : room.shareScreen());
    sharing = !sharing;
  } catch (e) {
    if (errorName(e) !== "NotAllowedError") showNotice(`Screen sharing failed: ${errorText(e)}`);
  }
  syncControls();
}

async function copyInvite() {
  const key = urlRoomKey();
  const url = `${location.origin}/?room=${encodeURIComponent(roomId)}${key ? `#k=${key}` : ""}`;
  els.invite.value = url;
  try {
    await navigator.clipboard.writeText(url);
    showNotice("Invite link copied: send it to whoever you want in the room.");
  } catch {
    // No clipboard (insecure context, old browser, denied): let the user copy it by hand.
    els.invite.hidden = false;
    els.invite.focus();
    els.invite.select();
    showNotice("Copy the selected link and send it.");
  }
}

// ------------------------------------------------------------------ shared drawing

/** @param {unknown} v @param {string[]} keys */
function isShape(v, keys) {
  if (!isObj(v) || typeof v.color !== "string") return false;
  const obj = v;
  return keys.every((k) => Number.isFinite(obj[k]));
}

/** @param {unknown} list @param {string[]} keys @returns {unknown[]} */
function shapes(list, keys) {
  return Array.isArray(list) ? list.filter((/** @type {unknown} */ item) => isShape(item, keys)) : [];
}

/** Validates a received drawing: a peer's data is never trusted blindly. @param {unknown} data @returns {Drawing | null} */
function parseDrawing(data) {
  if (!isObj(data)) return null;
  return {
    circles: /** @type {Circle[]} */ (shapes(data.circles, ["x", "y", "r"])),
    rectangles: /** @type {Rectangle[]} */ (shapes(data.rectangles, ["x", "y", "w", "h"])),
    triangles: /** @type {Triangle[]} */ (shapes(data.triangles, ["x", "y", "size"])),
    bgColor: typeof data.bgColor === "string" ? data.bgColor : DEFAULT_BG,
  };
}

/** @param {number} min @param {number} max */
const between = (min, max) => min + Math.random() * (max - min);
const randomColor = () => `hsl(${Math.floor(Math.random() * 360)}, 75%, 55%)`;

/** @param {(d: Drawing) => void} mutate */
function changeDrawing(mutate) {
  mutate(drawing);
  drawingTouched = true;
  renderDrawing();
  if (room) room.sendMessage("changedDrawing", structuredClone(drawing)).catch(reportSendError);
}

/** A newcomer gets the board from everyone who has one (all copies are equal). @param {Peer} peer */
function sendDrawingTo(peer) {
  if (!room || !drawingTouched) return;
  room.sendMessage("changedDrawing", structuredClone(drawing), { to: peer.id }).catch(reportSendError);
}

/** @param {MouseEvent} event */
function addShapeAt(event) {
  const rect = els.board.getBoundingClientRect();
  if (!rect.width || !rect.height) return;
  const x = Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width));
  const y = Math.min(1, Math.max(0, (event.clientY - rect.top) / rect.height));
  const color = randomColor();
  const checked = document.querySelector('input[name="shape"]:checked');
  const shape = checked instanceof HTMLInputElement ? checked.value : "circle";
  changeDrawing((d) => {
    if (shape === "rectangle") {
      const w = between(0.05, 0.12);
      const h = between(0.07, 0.18);
      d.rectangles.push({ x: x - w / 2, y: y - h / 2, w, h, color });
    } else if (shape === "triangle") d.triangles.push({ x, y, size: between(0.05, 0.1), color });
    else d.circles.push({ x, y, r: between(0.02, 0.05), color });
  });
}

/** Keeps the canvas's pixel size in step with its CSS size, so shapes stay sharp. */
function resizeBoard() {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(els.board.clientWidth * dpr);
  const h = Math.round(els.board.clientHeight * dpr);
  if (w > 0 && h > 0 && (w !== els.board.width || h !== els.board.height)) {
    els.board.width = w;
    els.board.height = h;
  }
  renderDrawing();
}

/** Draws the normalised (0..1) state at the canvas's current pixel size. */
function renderDrawing() {
  const ctx = els.board.getContext("2d");
  if (!ctx) return;
  const { width: W, height: H } = els.board;
  ctx.fillStyle = drawing.bgColor;
  ctx.fillRect(0, 0, W, H);
  for (const r of drawing.rectangles) {
    ctx.fillStyle = r.color;
    ctx.fillRect(r.x * W, r.y * H, r.w * W, r.h * H);
  }
  for (const t of drawing.triangles) {
    const side = t.size * W;
    const tall = (side * Math.sqrt(3)) / 2;
    ctx.fillStyle = t.color;
    ctx.beginPath();
    ctx.moveTo(t.x * W, t.y * H - (2 * tall) / 3);
    ctx.lineTo(t.x * W - side / 2, t.y * H + tall / 3);
    ctx.lineTo(t.x * W + side / 2, t.y * H + tall / 3);
    ctx.fill();
  }
  for (const c of drawing.circles) {
    ctx.fillStyle = c.color;
    ctx.beginPath();
    ctx.arc(c.x * W, c.y * H, Math.max(1, c.r * W), 0, 2 * Math.PI);
    ctx.fill();
  }
  if (/^#[0-9a-f]{6}$/i.test(drawing.bgColor)) els.bg.value = drawing.bgColor;
}

// ------------------------------------------------------------------ messages and chat

/** @param {string} type @param {unknown} data @param {Peer | null | undefined} from @param {string} [path] */
function handleMessage(type, data, from, path) {
  if (type === "changedDrawing") {
    const received = parseDrawing(data);
    if (!received) return;
    drawing = received;
    drawingTouched = true;
    renderDrawing();
  } else if (type === "chat" && isObj(data) && typeof data.text === "string") {
    const name = from && from.name ? from.name : typeof data.name === "string" ? data.name : peerName(from);
    addChat(name, data.text, path);
  }
}

/** @param {string} who @param {string} text @param {string} [path] */
function addChat(who, text, path) {
  const li = document.createElement("li");
  li.append(make("strong", "", who), make("span", "", text));
  if (path) li.append(make("small", "via", `via ${path}`));
  els.messages.append(li);
  els.messages.scrollTop = els.messages.scrollHeight;
  return li;
}

/** @param {SubmitEvent} event */
function sendChat(event) {
  event.preventDefault();
  const text = els.chatInput.value.trim();
  if (!text || !room) return;
  els.chatInput.value = "";
  const line = addChat("You", text);
  line.classList.add("own");
  room.sendMessage("chat", { text, name: els.name.value.trim() }).catch((/** @type {unknown} */ e) => {
    line.classList.add("failed");
    line.title = errorText(e);
    reportSendError(e);
  });
}

/** @param {unknown} e */
function reportSendError(e) {
  if (!room) return; // we left: nothing to tell
  const tooLarge = errorName(e) === "MessageTooLargeError";
  showNotice(tooLarge ? "That was too large to send." : `Not delivered to everyone: ${errorText(e)}`);
}

// ------------------------------------------------------------------ wiring

function init() {
  els.name.value = els.name.placeholder = `Guest ${100 + Math.floor(Math.random() * 900)}`;
  setupLanding();
  showView("landing");
  els.startForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const invited = urlRoomId();
    void start(() => (invited ? Promise.resolve(invited) : createRoom()));
  });
  els.newRoom.addEventListener("click", () => void start(createRoom));
  els.copy.addEventListener("click", () => void copyInvite());
  els.mic.addEventListener("click", () => {
    if (room) room.setAudioEnabled(!room.audioEnabled);
    syncControls();
  });
  els.cam.addEventListener("click", () => {
    room?.setVideoEnabled(!room.videoEnabled).catch((/** @type {unknown} */ e) => showNotice(`Camera: ${errorText(e)}`));
    syncControls();
  });
  els.share.addEventListener("click", () => void toggleShare());
  els.leave.addEventListener("click", leave);
  els.board.addEventListener("click", addShapeAt);
  els.bg.addEventListener("input", () => {
    drawing.bgColor = els.bg.value; // live preview; peers get it on "change"
    renderDrawing();
  });
  els.bg.addEventListener("change", () => changeDrawing((d) => void (d.bgColor = els.bg.value)));
  els.clear.addEventListener("click", () => changeDrawing((d) => void Object.assign(d, emptyDrawing(), { bgColor: d.bgColor })));
  els.chatForm.addEventListener("submit", sendChat);
  new ResizeObserver(resizeBoard).observe(els.board);
  new ResizeObserver(placeLabels).observe(els.videos);
  new MutationObserver(placeLabels).observe(els.remotes, { childList: true, subtree: true });
  window.addEventListener("pagehide", () => void (room && room.leave()));
}

init();
