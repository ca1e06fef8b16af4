/**
 * The typed error for a failed join.
 * @param {string} code
 * @param {string} message
 * @returns {BlueCamError}
 */
export function joinError(code: string, message: string): BlueCamError;
/** Typed errors of the BlueCam SDK; each sets `name` to its class name. */
export class BlueCamError extends Error {
    /**
     * @param {string} message
     * @param {string} [code] the server's error code, when there is one
     */
    constructor(message: string, code?: string);
    code: string | undefined;
}
/** The room of the token does not exist (or was deleted). */
export class RoomNotFoundError extends BlueCamError {
}
/** The token is invalid, expired, or for another room. */
export class UnauthorizedError extends BlueCamError {
}
/** The room has a member list and this identity is not on it. */
export class ForbiddenError extends BlueCamError {
}
/** The room is full. */
export class RoomFullError extends BlueCamError {
}
/** A message above 1 MiB (of JSON) was refused before anything was sent. */
export class MessageTooLargeError extends BlueCamError {
}
/** Some addressed peers could not be reached (they left, or the room closed). */
export class PeerUnreachableError extends BlueCamError {
    /**
     * @param {string} message
     * @param {string[]} peers the ids of the peers the message did not reach
     */
    constructor(message: string, peers: string[]);
    peers: string[];
}
/** The connection to the server failed for good (for example the room was closed). */
export class ConnectionError extends BlueCamError {
}
