//! The browser-facing files: the SDK under `/sdk/` (CORS open, cached with an ETag) and the
//! demo at `/` with its two demo-only endpoints, which mint rooms and tokens without the API
//! secret and are therefore on only when `demo` is (by default: a loopback bind).

use crate::{AppState, api::ApiError, auth::Claims};
use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bluecam_proto::{ErrorCode, Identity, Room, RoomId};
use serde::Deserialize;
use std::{
    collections::HashMap,
    hash::{Hash as _, Hasher as _},
    sync::LazyLock,
};

/// The SDK's modules, embedded at build time so the binary serves them with no files around.
const SDK_FILES: &[(&str, &str)] = &[
    ("bluecam.js", include_str!("../../../../sdk/js/bluecam.js")),
    (
        "bluecam.global.js",
        include_str!("../../../../sdk/js/bluecam.global.js"),
    ),
    (
        "close-codes.js",
        include_str!("../../../../sdk/js/close-codes.js"),
    ),
    (
        "delivery.js",
        include_str!("../../../../sdk/js/delivery.js"),
    ),
    ("e2ee.js", include_str!("../../../../sdk/js/e2ee.js")),
    ("errors.js", include_str!("../../../../sdk/js/errors.js")),
    ("events.js", include_str!("../../../../sdk/js/events.js")),
    ("frames.js", include_str!("../../../../sdk/js/frames.js")),
    ("http.js", include_str!("../../../../sdk/js/http.js")),
    ("media.js", include_str!("../../../../sdk/js/media.js")),
    ("mesh.js", include_str!("../../../../sdk/js/mesh.js")),
    ("peers.js", include_str!("../../../../sdk/js/peers.js")),
    (
        "scheduler.js",
        include_str!("../../../../sdk/js/scheduler.js"),
    ),
    ("sender.js", include_str!("../../../../sdk/js/sender.js")),
    (
        "signaling.js",
        include_str!("../../../../sdk/js/signaling.js"),
    ),
];

const DEMO_FILES: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../demo/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../../demo/style.css"),
    ),
];
const DEMO_INDEX: &str = include_str!("../../../../demo/index.html");

/// Demo rooms hold a small video mesh and disappear an hour after they empty.
const DEMO_MAX_PEERS: u32 = 8;
const DEMO_EMPTY_TIMEOUT_SECS: u64 = 3600;
const DEMO_TOKEN_TTL_SECS: u64 = 3600;
const DEMO_NAME_MAX: usize = 64;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sdk/{file}", get(sdk_file))
        .route("/demo/{file}", get(demo_file))
        .route("/demo/rooms", post(demo_room))
        .route("/demo/rooms/{id}/tokens", post(demo_token))
}

const STATUS_INDEX: &str = include_str!("index.html");

/// The ETag of every embedded file, computed once (keyed by the file's address: the bodies are
/// `'static` and distinct, and hashing the address is cheaper than hashing the text per request).
static ETAGS: LazyLock<HashMap<usize, String>> = LazyLock::new(|| {
    SDK_FILES
        .iter()
        .map(|(_, body)| *body)
        .chain(DEMO_FILES.iter().map(|(_, _, body)| *body))
        .chain([DEMO_INDEX, STATUS_INDEX])
        .map(|body| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            body.hash(&mut h);
            (body.as_ptr() as usize, format!("\"{:016x}\"", h.finish()))
        })
        .collect()
});

/// Serves `body` with an ETag, answering 304 when the client has it already.
fn cached(
    headers: &HeaderMap,
    content_type: &'static str,
    body: &'static str,
    cors: bool,
) -> Response {
    let etag = ETAGS
        .get(&(body.as_ptr() as usize))
        .map_or("", String::as_str);
    let fresh = !etag.is_empty()
        && headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag)
        && !etag.is_empty()
    {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    if cors {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    res
}

async fn sdk_file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match SDK_FILES.iter().find(|(name, _)| *name == file) {
        Some((_, body)) => cached(&headers, "text/javascript; charset=utf-8", body, true),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such SDK file",
        )
        .into_response(),
    }
}

fn demo_off() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "the demo is off here (by default it serves only this machine's browser that opened \
         the link printed at start; `bluecam serve --demo` serves it to anyone)",
    )
}

/// The demo page at `/` (or the status page when the demo is off). The default demo's link
/// (`/?demo=KEY`, printed at start) sets the cookie that its other requests then carry.
pub async fn index(
    State(state): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut res = if state.demo_serves(&headers) {
        cached(&headers, "text/html; charset=utf-8", DEMO_INDEX, false)
    } else if state.demo_by_link(&headers) && state.demo.link_in(query.as_deref()) {
        let mut res = cached(&headers, "text/html; charset=utf-8", DEMO_INDEX, false);
        let cookie = format!(
            "{DEMO_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            state.demo.key
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            res.headers_mut().insert(header::SET_COOKIE, value);
        }
        res
    } else {
        cached(&headers, "text/html; charset=utf-8", STATUS_INDEX, false)
    };
    // Which page `/` is depends on the request (its cookie, its headers): no cache may keep
    // one for another request (a shared cache, the demo's key cookie), and the browser asks
    // again each time (the ETag still spares the body).
    let h = res.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Cookie"));
    res
}

async fn demo_file(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !state.demo_serves(&headers) {
        return demo_off().into_response();
    }
    match DEMO_FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => cached(&headers, content_type, body, false),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such demo file",
        )
        .into_response(),
    }
}

/// Demo rooms one source may make: one a minute, five at once.
const DEMO_ROOMS_PER_SOURCE_PER_SEC: f64 = 1.0 / 60.0;
const DEMO_ROOMS_BURST: f64 = 5.0;
/// Demo rooms a node makes in an hour at most (each is kept an hour once empty, so this
/// bounds the demo rooms there are, about).
const DEMO_ROOMS_PER_HOUR: usize = 200;
const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

/// The cookie that carries the demo key.
const DEMO_COOKIE: &str = "bluecam_demo";

/// What the demo may still make (rooms per source, and rooms on this node in the last hour),
/// and the key of the default demo.
#[derive(Debug)]
pub struct DemoQuota {
    per_source: crate::front::sources::SharedRates,
    made: std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>,
    /// Drawn at each start and printed in the start lines' demo link: the default demo serves
    /// only browsers that opened that link (it sets a cookie), so a request that reaches the
    /// server through a proxy, whatever headers it carries, is not served.
    key: String,
}

impl Default for DemoQuota {
    fn default() -> Self {
        Self {
            per_source: crate::front::sources::SharedRates::new(
                DEMO_ROOMS_PER_SOURCE_PER_SEC,
                DEMO_ROOMS_BURST,
                10_000,
            ),
            made: std::sync::Mutex::default(),
            key: crate::auth::random_token(16),
        }
    }
}

/// Compares two strings in constant time (for their length).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl DemoQuota {
    /// The key of the default demo (in its link: `/?demo=KEY`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the request carries the demo key in its cookie.
    pub fn has_key(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| name == DEMO_COOKIE && same(value, &self.key))
    }

    /// Whether the query is the demo link's (`demo=KEY`).
    fn link_in(&self, query: Option<&str>) -> bool {
        query
            .unwrap_or("")
            .split('&')
            .filter_map(|p| p.split_once('='))
            .any(|(name, value)| name == "demo" && same(value, &self.key))
    }

    /// Takes a room from the quota of `source` (`None`: an exempt one, such as a proxy on this
    /// host) and of the node, or says why not.
    fn take(&self, source: Option<std::net::IpAddr>) -> Result<(), ApiError> {
        let now = std::time::Instant::now();
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        while made.front().is_some_and(|t| now.duration_since(*t) >= HOUR) {
            made.pop_front();
        }
        if made.len() >= DEMO_ROOMS_PER_HOUR {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "this server has made as many demo rooms as it makes in an hour; try later",
            ));
        }
        if let Some(source) = source
            && self.per_source.try_take(source, 1.0).is_err()
        {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "too many demo rooms from this address; try again in a minute",
            ));
        }
        made.push_back(now);
        Ok(())
    }
}

async fn demo_room(
    State(state): State<AppState>,
    tcp: Option<axum::Extension<std::sync::Arc<crate::front::serve::ConnPermit>>>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if !state.demo_serves(&headers) {
        return Err(demo_off());
    }
    state.demo.take(tcp.and_then(|t| t.source()))?;
    let room = Room {
        id: RoomId::new(crate::auth::demo_room_id(&state.secret)),
        name: Some("Demo room".into()),
        description: None,
        owner: None,
        members: None,
        max_peers: DEMO_MAX_PEERS.min(state.config.limits.max_peers_per_room),
        empty_timeout_secs: Some(DEMO_EMPTY_TIMEOUT_SECS),
        metadata: None,
        created_at: crate::unix_now(),
        peer_count: 0,
        multiple_sessions: false,
        removed: Default::default(),
    };
    state.store.create_room(room.clone()).await?;
    let invite = format!("/?room={}", room.id);
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"room": room, "invite": invite})),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoTokenRequest {
    name: Option<String>,
}

async fn demo_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    crate::api::ApiJson(body): crate::api::ApiJson<DemoTokenRequest>,
) -> Result<(StatusCode, Json<crate::api::TokenResponse>), ApiError> {
    if !state.demo_serves(&headers) {
        return Err(demo_off());
    }
    let name = body
        .name
        .map(|n| n.chars().take(DEMO_NAME_MAX).collect::<String>())
        .filter(|n| !n.trim().is_empty());
    // Only the demo's own rooms, and the same answer for any other room as for a missing
    // one: this endpoint must neither open the backend's rooms nor tell which exist.
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::RoomNotFound,
            "no such demo room",
        )
    };
    if !crate::auth::is_demo_room_id(&state.secret, &id) {
        return Err(missing());
    }
    let room = state
        .store
        .room(RoomId::new(id))
        .await?
        .ok_or_else(missing)?;
    let now = crate::unix_now();
    let claims = Claims {
        sub: Identity::new(format!("guest-{}", crate::auth::random_token(6))),
        room: room.id,
        exp: now + DEMO_TOKEN_TTL_SECS,
        iat: now,
        nbf: None,
        name,
        metadata: None,
        permissions: None,
    };
    crate::api::issue_token(&state, &claims)
}
