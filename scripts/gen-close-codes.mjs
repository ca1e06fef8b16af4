#!/usr/bin/env node
// Writes sdk/js/close-codes.js from tests/vectors/close-codes.json, the one list of close codes
// that the server (checked by crates/bluecam-proto/tests/vectors.rs) and the SDK share.
// Usage: node scripts/gen-close-codes.mjs   (sdk/js/close-codes.test.js fails when it is stale)
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const VECTORS = new URL("../tests/vectors/close-codes.json", import.meta.url);
export const OUTPUT = new URL("../sdk/js/close-codes.js", import.meta.url);

/**
 * The module's text for the vectors' JSON text.
 * @param {string} json
 */
export function render(json) {
  const { codes, client } = JSON.parse(json);
  const rows = [...codes, ...client].map(({ code, name, reason, resume, nextNode }) => ({ code, name, reason, resume, nextNode }));
  const table = rows.map((r) => `  ${JSON.stringify(r)},`).join("\n");
  const names = rows.map((r) => `  ${r.name}: ${r.code},`).join("\n");
  return `// @ts-check
// Generated from tests/vectors/close-codes.json by scripts/gen-close-codes.mjs: do not edit.
/**
 * The WebSocket close codes (docs/protocol.md, close codes): the server's, and the SDK's own
 * \`unresponsive\` (its watchdog's, never sent by a server). \`resume\`: the session goes on after
 * this close; \`nextNode\`: the next attempt goes to the next node.
 * @typedef {{code: number, name: string, reason: string, resume: boolean, nextNode: boolean}} CloseCodeInfo
 */

/** @type {readonly CloseCodeInfo[]} */
export const CLOSE_CODES = Object.freeze([
${table}
]);

/** Each close code by its name. */
export const CLOSE = Object.freeze({
${names}
});
`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  writeFileSync(OUTPUT, render(readFileSync(VECTORS, "utf8")));
  console.log(`wrote ${fileURLToPath(OUTPUT)}`);
}
