// A minimal app backend for BlueCam, in Node.js with no framework: it creates meetings (rooms),
// mints room tokens offline with a standard JWT library (jose), removes a participant and keeps
// them out, and receives BlueCam's webhooks, verified with the Standard Webhooks library.
//
//   BLUECAM_URL=http://127.0.0.1:8080 BLUECAM_API_SECRET=… BLUECAM_TOKEN_KEY=… \
//   BLUECAM_WEBHOOK_SECRET=whsec_… PORT=3000 node server.js
//
// BLUECAM_TOKEN_KEY is `bluecam token --print-key`: it signs tokens and nothing else, so the
// part of an app that only lets users in never needs the API secret. The routes (JSON bodies):
//   POST /meetings                       {name?}          -> {room}
//   POST /meetings/:room/join            {user}           -> {token, server}
//   POST /meetings/:room/remove          {peerId}         -> {removed}
//   POST /webhooks                       (BlueCam's signed events)
//   GET  /events                                          -> the verified events received
// A real app checks who its user is (its own session) before any of this.
import { createServer } from "node:http";
import { SignJWT } from "jose";
import { Webhook } from "standardwebhooks";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`set ${name}`);
  return v;
};
const bluecam = env("BLUECAM_URL").replace(/\/$/, "");
const apiSecret = env("BLUECAM_API_SECRET");
const tokenKey = new TextEncoder().encode(env("BLUECAM_TOKEN_KEY"));
const webhook = new Webhook(env("BLUECAM_WEBHOOK_SECRET"));

/** Identities removed from each room: this app does not let them back in. */
const removed = new Map();
/** The webhook events received, verified. */
const events = [];

/** Calls BlueCam's HTTP API; throws with its error code on failure. */
async function api(method, path, body) {
  const res = await fetch(bluecam + path, {
    method,
    headers: { authorization: `Bearer ${apiSecret}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  const json = text ? JSON.parse(text) : null;
  if (!res.ok) throw Object.assign(new Error(json?.error?.message ?? res.statusText), { status: res.status, code: json?.error?.code });
  return json;
}

/** A token for `user` in `room`, valid one hour (HS256 under the token key). */
function mint(room, user) {
  return new SignJWT({ room, name: user })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(user)
    .setIssuedAt()
    .setExpirationTime("1h")
    .sign(tokenKey);
}

const routes = {
  "POST /meetings": async (_, body) => {
    const room = await api("POST", "/v1/rooms", { name: body.name ?? null, emptyTimeoutSecs: 3600 });
    return [201, { room: room.id }];
  },
  "POST /meetings/:room/join": async (room, body) => {
    if (typeof body.user !== "string" || !body.user) return [400, { error: "user required" }];
    if (removed.get(room)?.has(body.user)) return [403, { error: "removed from this meeting" }];
    return [200, { token: await mint(room, body.user), server: bluecam }];
  },
  "POST /meetings/:room/remove": async (room, body) => {
    // Who is it? (The peer list names each peer's identity.)
    const { peer } = await api("DELETE", `/v1/rooms/${encodeURIComponent(room)}/peers/${encodeURIComponent(body.peerId)}`);
    if (!removed.has(room)) removed.set(room, new Set());
    removed.get(room).add(peer.identity);
    return [200, { removed: peer.identity }];
  },
  "GET /events": async () => [200, events],
};

/** Reads a request's body as text. */
const text = async (req) => {
  let s = "";
  for await (const chunk of req) s += chunk;
  return s;
};

const server = createServer(async (req, res) => {
  const reply = (status, value) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(value));
  };
  try {
    const body = await text(req);
    if (req.method === "POST" && req.url === "/webhooks") {
      // Verify on the exact bytes received, before parsing: a bad signature or an old
      // timestamp throws.
      try {
        const event = webhook.verify(body, req.headers);
        events.push({ id: req.headers["webhook-id"], ...event });
        return reply(204, null);
      } catch {
        return reply(400, { error: "bad signature" });
      }
    }
    const path = new URL(req.url ?? "/", "http://x").pathname;
    const m = path.match(/^\/meetings\/([^/]+)\/(join|remove)$/);
    const key = m ? `${req.method} /meetings/:room/${m[2]}` : `${req.method} ${path}`;
    const route = routes[key];
    if (!route) return reply(404, { error: "no such route" });
    const [status, value] = await route(m ? decodeURIComponent(m[1]) : "", body ? JSON.parse(body) : {});
    reply(status, value);
  } catch (e) {
    reply(e.status ?? 500, { error: e.message, code: e.code });
  }
});
server.listen(Number(process.env.PORT ?? 3000), "127.0.0.1", () => {
  console.log(`backend listening on http://127.0.0.1:${server.address().port}`);
});
