"""A minimal app backend for BlueCam in Python, with the standard library's HTTP server: it
creates meetings (rooms), mints room tokens offline with a standard JWT library (PyJWT), removes a
participant and keeps them out, and receives BlueCam's webhooks, verified with the Standard
Webhooks library.

    python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
    BLUECAM_URL=http://127.0.0.1:8080 BLUECAM_API_SECRET=... BLUECAM_TOKEN_KEY=... \\
    BLUECAM_WEBHOOK_SECRET=whsec_... PORT=3000 .venv/bin/python app.py

BLUECAM_TOKEN_KEY is `bluecam token --print-key`: it signs tokens and nothing else, so the part
of an app that only lets users in never needs the API secret. The routes (JSON bodies):
  POST /meetings                  {name?}    -> {room}
  POST /meetings/<room>/join      {user}     -> {token, server}
  POST /meetings/<room>/remove    {peerId}   -> {removed}
  POST /webhooks                  (BlueCam's signed events)
  GET  /events                               -> the verified events received
A real app checks who its user is (its own session) before any of this.
"""

import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def env(name):
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"set {name}")
    return value


BLUECAM = env("BLUECAM_URL").rstrip("/")
API_SECRET = env("BLUECAM_API_SECRET")
TOKEN_KEY = env("BLUECAM_TOKEN_KEY")
WEBHOOK = Webhook(env("BLUECAM_WEBHOOK_SECRET"))

lock = threading.Lock()
removed = {}  # room -> identities this app does not let back in
events = []  # the webhook events received, verified


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code = status, code


def api(method, path, body=None):
    """Calls BlueCam's HTTP API; raises ApiError with its error code on failure."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BLUECAM + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {API_SECRET}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            text = res.read()
            return json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        error = json.loads(e.read() or b"{}").get("error", {})
        raise ApiError(e.code, error.get("code"), error.get("message", e.reason)) from None


def mint(room, user):
    """A token for `user` in `room`, valid one hour (HS256 under the token key)."""
    now = int(time.time())
    claims = {"sub": user, "room": room, "name": user, "iat": now, "exp": now + 3600}
    return jwt.encode(claims, TOKEN_KEY, algorithm="HS256")


def create_meeting(_room, body):
    room = api("POST", "/v1/rooms", {"name": body.get("name"), "emptyTimeoutSecs": 3600})
    return 201, {"room": room["id"]}


def join_meeting(room, body):
    user = body.get("user")
    if not isinstance(user, str) or not user:
        return 400, {"error": "user required"}
    with lock:
        if user in removed.get(room, set()):
            return 403, {"error": "removed from this meeting"}
    return 200, {"token": mint(room, user), "server": BLUECAM}


def remove_participant(room, body):
    quote = urllib.parse.quote
    answer = api("DELETE", f"/v1/rooms/{quote(room, safe='')}/peers/{quote(body['peerId'], safe='')}")
    identity = answer["peer"]["identity"]
    with lock:
        removed.setdefault(room, set()).add(identity)
    return 200, {"removed": identity}


ROUTES = {
    ("POST", "meetings"): create_meeting,
    ("POST", "join"): join_meeting,
    ("POST", "remove"): remove_participant,
}


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, value):
        body = b"" if value is None else json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/events":
            with lock:
                return self.reply(200, list(events))
        self.reply(404, {"error": "no such route"})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/webhooks":
            # Verify on the exact bytes received, before parsing: a bad signature or an old
            # timestamp raises.
            try:
                event = WEBHOOK.verify(raw, dict(self.headers))
            except WebhookVerificationError:
                return self.reply(400, {"error": "bad signature"})
            with lock:
                events.append({"id": self.headers["webhook-id"], **event})
            return self.reply(204, None)
        m = re.fullmatch(r"/meetings/([^/]+)/(join|remove)", self.path)
        key = ("POST", m.group(2)) if m else ("POST", "meetings" if self.path == "/meetings" else "")
        route = ROUTES.get(key)
        if route is None:
            return self.reply(404, {"error": "no such route"})
        try:
            room = urllib.parse.unquote(m.group(1)) if m else ""
            status, value = route(room, json.loads(raw or b"{}"))
        except ApiError as e:
            status, value = e.status, {"error": str(e), "code": e.code}
        self.reply(status, value)

    def log_message(self, *_):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "3000"))), Handler)
    print(f"backend listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()
