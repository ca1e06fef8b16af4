// @ts-check
// close-codes.js is generated from the shared vectors (tests/vectors/close-codes.json), which
// the server's CloseCode is checked against too: the SDK's table must be exactly what the
// generator makes of them now, and the connection's decisions must follow the table.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { render, VECTORS, OUTPUT } from "../../scripts/gen-close-codes.mjs";
import { CLOSE, CLOSE_CODES } from "./close-codes.js";
import { closeDecision } from "./signaling.js";

test("close-codes.js is generated from the current vectors (run node scripts/gen-close-codes.mjs)", () => {
  assert.equal(readFileSync(OUTPUT, "utf8"), render(readFileSync(VECTORS, "utf8")));
});

test("every code has one name, and the names map back", () => {
  assert.equal(new Set(CLOSE_CODES.map((c) => c.code)).size, CLOSE_CODES.length);
  for (const c of CLOSE_CODES) assert.equal(/** @type {Record<string, number>} */ (CLOSE)[c.name], c.code);
});

test("the connection ends for good exactly after the non-resumable codes", () => {
  for (const c of CLOSE_CODES) {
    const d = closeDecision(c.code, { joined: true, canRefreshToken: false });
    assert.equal(d.final, !c.resume, `${c.code} ${c.name}`);
    assert.equal(d.nextNode, c.nextNode, `${c.code} ${c.name}`);
  }
  // An abrupt loss (no close frame; browsers say 1006) is resumable and stays on the node.
  assert.deepEqual(closeDecision(1006, { joined: true, canRefreshToken: false }), { final: false, nextNode: false });
  // A refused token during a resume is worth one more try when a fresh token can be had.
  assert.equal(closeDecision(CLOSE.unauthorized, { joined: false, canRefreshToken: true }).final, false);
  assert.equal(closeDecision(CLOSE.unauthorized, { joined: true, canRefreshToken: true }).final, true);
});
