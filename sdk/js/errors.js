// @ts-check
/**
 * Typed errors of the BlueCam SDK; each sets `name` to its class name and has a `code`.
 *
 * The codes: a join refused (`room_not_found`, `unauthorized`, `forbidden`, `room_full`,
 * `unavailable`, …: the server's error codes, docs/protocol.md); a session the server ended
 * for good, named like its close code (`room_closed`: the room was deleted or expired,
 * `superseded`: the same identity joined elsewhere, `kicked`: the app's backend removed this
 * peer, `session_expired`, `too_many_errors`,
 * `protocol_error`, …; `connection_closed` for a code this SDK does not know); and the SDK's
 * own: `server_required`, `bad_options`, `unreachable` (no server could be reached for the
 * join), `unsupported` (no WebSocket with `signalMethod: "websocket"`), `left` (the room was
 * left), `too_large`, `unserializable`, `permission_denied`, `peer_unreachable`,
 * `e2ee_mismatch` (end-to-end encryption does not match with a peer: another room key, or one
 * side has none).
 * @typedef {"room_not_found" | "unauthorized" | "forbidden" | "room_full" | "unavailable"
 *   | "room_closed" | "superseded" | "kicked" | "session_expired" | "too_many_errors" | "protocol_error"
 *   | "invalid_data" | "message_too_big" | "bad_join" | "connection_closed"
 *   | "server_required" | "bad_options" | "unreachable" | "unsupported" | "left" | "too_large"
 *   | "unserializable" | "permission_denied" | "peer_unreachable" | "e2ee_mismatch"
 *   | (string & {})} ErrorCode
 */

export class BlueCamError extends Error {
  /**
   * @param {string} message
   * @param {ErrorCode} code
   */
  constructor(message, code) {
    super(message);
    this.name = new.target.name;
    /** @type {ErrorCode} */
    this.code = code;
  }
}
/** The room of the token does not exist (or was deleted). */
export class RoomNotFoundError extends BlueCamError {}
/** The token is invalid, expired, or for another room. */
export class UnauthorizedError extends BlueCamError {}
/** The room has a member list and this identity is not on it. */
export class ForbiddenError extends BlueCamError {}
/** The room is full. */
export class RoomFullError extends BlueCamError {}
/** A message above 1 MiB (of JSON) was refused before anything was sent. */
export class MessageTooLargeError extends BlueCamError {}
/** The data of a message cannot be sent (a cycle, a `BigInt`); nothing was sent. */
export class UnserializableError extends BlueCamError {}
/** Some addressed peers could not be reached (they left, or the room closed). */
export class PeerUnreachableError extends BlueCamError {
  /**
   * @param {string} message
   * @param {string[]} peers the ids of the peers the message did not reach
   */
  constructor(message, peers) {
    super(message, "peer_unreachable");
    this.peers = peers;
  }
}
/**
 * End-to-end encryption does not match with these peers (`e2ee_mismatch`): they use another
 * room key, or one side has none. Nothing was sent to them and nothing of theirs is delivered.
 * Reported through `onError` (with `peer`) when found, and the reason a `sendMessage` to them
 * rejects.
 */
export class E2eeMismatchError extends PeerUnreachableError {
  /**
   * @param {string} message
   * @param {string[]} peers their ids
   * @param {import("./frames.js").Peer} [peer] the peer found mismatched (in `onError`)
   */
  constructor(message, peers, peer) {
    super(message, peers);
    /** @type {ErrorCode} */
    this.code = "e2ee_mismatch";
    this.peer = peer;
  }
}
/** The connection to the server failed for good (for example the room was closed). */
export class ConnectionError extends BlueCamError {}

/**
 * The typed error for a failed join.
 * @param {string} code
 * @param {string} message
 * @returns {BlueCamError}
 */
export function joinError(code, message) {
  switch (code) {
    case "room_not_found":
      return new RoomNotFoundError(message, code);
    case "unauthorized":
      return new UnauthorizedError(message, code);
    case "forbidden":
      return new ForbiddenError(message, code);
    case "room_full":
      return new RoomFullError(message, code);
    default:
      return new ConnectionError(message, code);
  }
}
