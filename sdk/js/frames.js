// @ts-check
/**
 * The frames between the SDK and the server (docs/protocol.md, sections 4 and 5), as
 * discriminated unions on `op`, and the check that turns text from the wire into one. A frame
 * that fails the check is dropped, so the code that switches on `op` can trust the fields.
 */

/**
 * @typedef {{id: string, identity: string, name?: string, metadata?: unknown, server?: true}} Peer
 *   (`server: true` only on the `from` of a message the app's backend sent)
 * @typedef {{id: string, name?: string, description?: string, metadata?: unknown, maxPeers: number}} RoomInfo
 * @typedef {{id: string, secret: string, resumeWindowSecs?: number}} SessionInfo
 * @typedef {{maxFrameBytes?: number, rateFramesPerSec?: number, rateBurstFrames?: number,
 *   rateBytesPerSec?: number, rateBurstBytes?: number, outboundQueueBytes?: number,
 *   maxPeers?: number, resumeWindowSecs?: number, pingIntervalSecs?: number}} Limits
 */

/**
 * What the server sends.
 * @typedef {{op: "joined", self: Peer, room: RoomInfo, peers: Peer[], session: SessionInfo,
 *   iceServers?: RTCIceServer[], limits?: Limits, resumed?: boolean}} JoinedFrame
 * @typedef {{op: "peer_joined", peer: Peer}} PeerJoinedFrame
 * @typedef {{op: "peer_left", peer: Peer, reason: string}} PeerLeftFrame
 * @typedef {{op: "signal", from: string, data: unknown}} SignalInFrame
 * @typedef {{op: "message", from: string, msg: unknown}} MessageFrame
 * @typedef {{op: "server_message", e: number, s: number, type: string, data: unknown}} ServerMessageFrame
 * @typedef {{op: "room_closed", reason: string}} RoomClosedFrame
 * @typedef {{op: "error", code: string, message: string, ref?: number, peers?: string[],
 *   retryAfterMs?: number, close?: number}} ErrorFrame
 * @typedef {{op: "ping"} | {op: "pong"}} PingFrame
 * @typedef {JoinedFrame | PeerJoinedFrame | PeerLeftFrame | SignalInFrame | MessageFrame |
 *   ServerMessageFrame | RoomClosedFrame | ErrorFrame | PingFrame} ServerFrame
 */

/**
 * What the SDK sends.
 * @typedef {{op: "join", token: string, resume?: {session: string, secret: string}}} JoinFrame
 * @typedef {{op: "signal", to: string, data: any}} SignalOutFrame
 * @typedef {{op: "send", to?: string[], msg: unknown}} SendFrame
 * @typedef {{op: "leave"}} LeaveFrame
 * @typedef {{op: "server_ack", e: number, s: number}} ServerAckFrame
 * @typedef {JoinFrame | SignalOutFrame | SendFrame | ServerAckFrame | LeaveFrame | PingFrame} ClientFrame
 */

/** @param {unknown} v */
const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
/** @param {unknown} v */
const isString = (v) => typeof v === "string";
/** @param {unknown} v */
const isPeer = (v) => isObject(v) && isString(/** @type {any} */ (v).id) && isString(/** @type {any} */ (v).identity);

/** For each server op, whether a frame of it has what the SDK reads. */
const SERVER_CHECKS = /** @type {Record<ServerFrame["op"], (f: any) => boolean>} */ ({
  joined: (f) => isPeer(f.self) && isObject(f.room) && Array.isArray(f.peers) && f.peers.every(isPeer) &&
    isObject(f.session) && isString(f.session.id) && isString(f.session.secret) &&
    (f.iceServers === undefined || Array.isArray(f.iceServers)) && (f.limits === undefined || isObject(f.limits)),
  peer_joined: (f) => isPeer(f.peer),
  peer_left: (f) => isPeer(f.peer) && isString(f.reason),
  signal: (f) => isString(f.from) && "data" in f,
  message: (f) => isString(f.from) && "msg" in f,
  server_message: (f) => Number.isSafeInteger(f.e) && f.e >= 0 && Number.isSafeInteger(f.s) && f.s >= 1 &&
    isString(f.type) && "data" in f,
  room_closed: (f) => isString(f.reason),
  error: (f) => isString(f.code) && isString(f.message) &&
    (f.peers === undefined || (Array.isArray(f.peers) && f.peers.every(isString))),
  ping: () => true,
  pong: () => true,
});

/**
 * A server frame from what the transport delivered (a WebSocket's text, or an object the HTTP
 * transport already parsed); null when it is not one this SDK can read (not JSON, an unknown
 * op, a field missing or of the wrong type).
 * @param {unknown} raw
 * @returns {ServerFrame | null}
 */
export function parseServerFrame(raw) {
  let f = raw;
  if (typeof raw === "string") {
    try {
      f = JSON.parse(raw);
    } catch {
      return null;
    }
  }
  if (!isObject(f)) return null;
  const frame = /** @type {any} */ (f);
  const check = Object.hasOwn(SERVER_CHECKS, frame.op) ? SERVER_CHECKS[/** @type {ServerFrame["op"]} */ (frame.op)] : undefined;
  return check && check(frame) ? /** @type {ServerFrame} */ (frame) : null;
}
