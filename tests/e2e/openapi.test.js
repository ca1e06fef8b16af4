// @ts-check
// The OpenAPI document at GET /v1/openapi.json against a real `bluecam serve`: a valid OpenAPI
// 3.1 document (checked with an independent validator), every operation it lists is a route the
// server has, answering only statuses the document names, behind the bearer secret; and it
// lists the same operations as docs/http-api.md.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { Validator } from "@seriousme/openapi-schema-validator";
import { TestServer, stopAll } from "./harness.js";

/** @type {TestServer} */
let server;

before(async () => {
  server = await TestServer.start();
});
after(stopAll);

/** @returns {Promise<any>} */
const fetchDoc = async () => {
  const res = await fetch(server.url + "/v1/openapi.json");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /application\/json/);
  return res.json();
};

/** Operations as "METHOD /path" with every path parameter written `{}`. @param {any} doc */
const operations = (doc) => Object.entries(doc.paths).flatMap(([path, item]) =>
  Object.keys(/** @type {object} */ (item)).map((m) => `${m.toUpperCase()} ${path.replace(/\{[^}]+\}/g, "{}")}`)).sort();

test("the document is valid OpenAPI 3.1, served without the secret, every $ref resolves", async () => {
  const doc = await fetchDoc();
  assert.equal(doc.openapi, "3.1.0");
  const validator = new Validator();
  const res = await validator.validate(doc);
  assert.equal(res.valid, true, JSON.stringify(res.errors, null, 1));
  // Every reference points at a schema that is there.
  const refs = [...JSON.stringify(doc).matchAll(/"\$ref":"#\/components\/schemas\/([^"]+)"/g)].map((m) => m[1]);
  assert.ok(refs.length > 10);
  for (const r of refs) assert.ok(doc.components.schemas[r], `$ref to a missing schema ${r}`);
  assert.deepEqual(doc.components.securitySchemes.bearer, { type: "http", scheme: "bearer" });
  assert.deepEqual(doc.security, [{ bearer: [] }]);
});

test("every operation is a route of the server, behind the secret, answering only statuses it documents", async () => {
  const doc = await fetchDoc();
  const ops = operations(doc);
  assert.ok(ops.length >= 11, ops.join(", "));
  /** @type {Record<string, any>} */
  const bodies = { POST: {}, PATCH: {} };
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(/** @type {Record<string, any>} */ (item))) {
      const url = server.url + path.replace(/\{[^}]+\}/g, "no-such-thing");
      const m = method.toUpperCase();
      const anonymous = await fetch(url, { method: m });
      assert.equal(anonymous.status, 401, `${m} ${path} without the secret`);
      const r = await server.api(m, new URL(url).pathname, bodies[m]);
      assert.ok(!(r.status === 404 && r.body?.error?.message === "no such route") && r.status !== 405,
        `${m} ${path} is not a route of the server: ${r.status} ${JSON.stringify(r.body)}`);
      assert.ok(Object.hasOwn(op.responses, String(r.status)),
        `${m} ${path} answered ${r.status}, which the document does not name: ${JSON.stringify(r.body)}`);
      if (r.status >= 400) assert.ok(typeof r.body?.error?.code === "string", `${m} ${path}: the error body`);
    }
  }
});

test("the document lists exactly the operations docs/http-api.md describes", async () => {
  const doc = await fetchDoc();
  const text = await readFile(new URL("../../docs/http-api.md", import.meta.url), "utf8");
  const documented = [...new Set([...text.matchAll(/`(GET|POST|PATCH|DELETE) (\/v1\/[^`\s?]+)/g)]
    .map((m) => `${m[1]} ${m[2].replace(/\{[^}]+\}/g, "{}")}`)
    // The clients' transport (docs/protocol.md) and the document itself are not operations of
    // the backends' API.
    .filter((o) => !/ \/v1\/(ws|http\/|openapi\.json)/.test(o)))].sort();
  assert.deepEqual(operations(doc), documented);
});
