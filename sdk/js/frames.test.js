// @ts-check
// The SDK reads every server frame of the shared vectors (the server's own output, checked on
// the Rust side) as its op, and drops what it cannot trust.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { parseServerFrame } from "./frames.js";

const vectors = JSON.parse(readFileSync(new URL("../../tests/vectors/server-frames.json", import.meta.url), "utf8"));

test("every server frame of the shared vectors parses, as text and as an object", () => {
  assert.ok(vectors.valid.length > 0);
  for (const v of vectors.valid) {
    assert.equal(parseServerFrame(v.text)?.op, v.op, v.name);
    assert.equal(parseServerFrame(JSON.parse(v.text))?.op, v.op, v.name);
  }
});

test("frames the SDK cannot read are dropped, not half-read", () => {
  const broken = [
    "not json",
    "[]",
    "null",
    '"joined"',
    '{"op":"future_op"}',
    '{"op":"toString"}',
    '{"op":"__proto__"}',
    '{"op":"peer_joined"}',
    '{"op":"peer_joined","peer":{"id":7,"identity":"a"}}',
    '{"op":"peer_left","peer":{"id":"a","identity":"b"}}',
    '{"op":"signal","data":{}}',
    '{"op":"message","from":"a"}',
    '{"op":"room_closed"}',
    '{"op":"error","code":"unknown_peer","message":"x","peers":[1]}',
    '{"op":"joined","self":{"id":"a","identity":"b"},"room":{},"peers":[],"session":{"id":"s"}}',
    '{"op":"joined","self":{"id":"a","identity":"b"},"room":{},"peers":[{}],"session":{"id":"s","secret":"t"}}',
  ];
  for (const text of broken) assert.equal(parseServerFrame(text), null, text);
});
