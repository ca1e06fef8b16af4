// @ts-check
// Generated from tests/vectors/close-codes.json by scripts/gen-close-codes.mjs: do not edit.
/**
 * The WebSocket close codes (docs/protocol.md, close codes): the server's, and the SDK's own
 * `unresponsive` (its watchdog's, never sent by a server). `resume`: the session goes on after
 * this close; `nextNode`: the next attempt goes to the next node.
 * @typedef {{code: number, name: string, reason: string, resume: boolean, nextNode: boolean}} CloseCodeInfo
 */

/** @type {readonly CloseCodeInfo[]} */
export const CLOSE_CODES = Object.freeze([
  {"code":1000,"name":"normal","reason":"left","resume":false,"nextNode":false},
  {"code":1001,"name":"going_away","reason":"server shutting down","resume":true,"nextNode":true},
  {"code":1002,"name":"protocol_error","reason":"broken frame","resume":false,"nextNode":false},
  {"code":1007,"name":"invalid_data","reason":"text frame is not UTF-8","resume":false,"nextNode":false},
  {"code":1009,"name":"message_too_big","reason":"frame too large","resume":false,"nextNode":false},
  {"code":1011,"name":"internal_error","reason":"internal error","resume":true,"nextNode":false},
  {"code":1012,"name":"service_restart","reason":"server restarting","resume":true,"nextNode":true},
  {"code":4000,"name":"bad_join","reason":"first frame must be join","resume":false,"nextNode":false},
  {"code":4001,"name":"unauthorized","reason":"unauthorized","resume":false,"nextNode":false},
  {"code":4003,"name":"forbidden","reason":"forbidden","resume":false,"nextNode":false},
  {"code":4004,"name":"room_not_found","reason":"room not found","resume":false,"nextNode":false},
  {"code":4008,"name":"join_timeout","reason":"join timeout","resume":true,"nextNode":false},
  {"code":4009,"name":"room_full","reason":"room full","resume":false,"nextNode":false},
  {"code":4010,"name":"session_expired","reason":"session expired","resume":false,"nextNode":false},
  {"code":4011,"name":"idle_timeout","reason":"idle timeout","resume":true,"nextNode":false},
  {"code":4029,"name":"too_many_errors","reason":"too many bad frames","resume":false,"nextNode":false},
  {"code":4030,"name":"slow_consumer","reason":"slow consumer","resume":true,"nextNode":false},
  {"code":4040,"name":"room_closed","reason":"room closed","resume":false,"nextNode":false},
  {"code":4041,"name":"replaced","reason":"session resumed elsewhere","resume":true,"nextNode":false},
  {"code":4042,"name":"superseded","reason":"replaced by a newer session of this identity","resume":false,"nextNode":false},
  {"code":4043,"name":"kicked","reason":"removed from the room","resume":false,"nextNode":false},
  {"code":4998,"name":"unresponsive","reason":"server unresponsive","resume":true,"nextNode":true},
]);

/** Each close code by its name. */
export const CLOSE = Object.freeze({
  normal: 1000,
  going_away: 1001,
  protocol_error: 1002,
  invalid_data: 1007,
  message_too_big: 1009,
  internal_error: 1011,
  service_restart: 1012,
  bad_join: 4000,
  unauthorized: 4001,
  forbidden: 4003,
  room_not_found: 4004,
  join_timeout: 4008,
  room_full: 4009,
  session_expired: 4010,
  idle_timeout: 4011,
  too_many_errors: 4029,
  slow_consumer: 4030,
  room_closed: 4040,
  replaced: 4041,
  superseded: 4042,
  kicked: 4043,
  unresponsive: 4998,
});
