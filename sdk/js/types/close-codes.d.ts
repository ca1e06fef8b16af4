/**
 * The WebSocket close codes (docs/protocol.md, close codes): the server's, and the SDK's own
 * `unresponsive` (its watchdog's, never sent by a server). `resume`: the session goes on after
 * this close; `nextNode`: the next attempt goes to the next node.
 * @typedef {{code: number, name: string, reason: string, resume: boolean, nextNode: boolean}} CloseCodeInfo
 */
/** @type {readonly CloseCodeInfo[]} */
export const CLOSE_CODES: readonly CloseCodeInfo[];
/** Each close code by its name. */
export const CLOSE: Readonly<{
    normal: 1000;
    going_away: 1001;
    protocol_error: 1002;
    invalid_data: 1007;
    message_too_big: 1009;
    internal_error: 1011;
    service_restart: 1012;
    bad_join: 4000;
    unauthorized: 4001;
    forbidden: 4003;
    room_not_found: 4004;
    join_timeout: 4008;
    room_full: 4009;
    session_expired: 4010;
    idle_timeout: 4011;
    too_many_errors: 4029;
    slow_consumer: 4030;
    room_closed: 4040;
    replaced: 4041;
    superseded: 4042;
    kicked: 4043;
    unresponsive: 4998;
}>;
/**
 * The WebSocket close codes (docs/protocol.md, close codes): the server's, and the SDK's own
 * `unresponsive` (its watchdog's, never sent by a server). `resume`: the session goes on after
 * this close; `nextNode`: the next attempt goes to the next node.
 */
export type CloseCodeInfo = {
    code: number;
    name: string;
    reason: string;
    resume: boolean;
    nextNode: boolean;
};
