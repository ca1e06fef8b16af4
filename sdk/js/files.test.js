// @ts-check
// Every module of the SDK ships: in the npm package's file list, and embedded in the server,
// which serves it under /sdk/ (crates/bluecam-server/src/front/web.rs). The package's license
// files are the repository's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";

const dir = new URL("./", import.meta.url);
const modules = readdirSync(dir).filter((f) => f.endsWith(".js") && !f.endsWith(".test.js"));

test("every SDK module is in package.json's files", () => {
  const pkg = JSON.parse(readFileSync(new URL("package.json", dir), "utf8"));
  assert.deepEqual(modules.filter((m) => !pkg.files.includes(m)), []);
});

test("every SDK module is embedded in the server", () => {
  const web = readFileSync(new URL("../../crates/bluecam-server/src/front/web.rs", import.meta.url), "utf8");
  assert.deepEqual(modules.filter((m) => !web.includes(`include_str!("../../../../sdk/js/${m}")`)), []);
});

test("the package's license files are the repository's", () => {
  for (const name of ["LICENSE", "LICENSE-MIT", "LICENSE-APACHE"]) {
    assert.equal(readFileSync(new URL(name, dir), "utf8"), readFileSync(new URL(`../../${name}`, dir), "utf8"), name);
  }
});
