//! The HTTP API for the app's backend (docs/http-api.md): rooms and tokens, bearer-secret auth,
//! and one error body shape for every failure.

use crate::{AppState, auth::Claims, persist::store::StoreError};
use axum::{
    Json, Router,
    extract::{FromRequest, Path, Query, Request, State, rejection::JsonRejection},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use bluecam_proto::{ErrorCode, Identity, Permissions, RawValue, Room, RoomClosedReason, RoomId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

/// Longest room id, name, description or identity accepted.
const MAX_ID_LEN: usize = 128;
const MAX_TEXT_LEN: usize = 1024;
const MAX_MEMBERS: usize = 1000;
const MAX_METADATA_BYTES: usize = 16 << 10;
/// The latest time the usage report takes (the end of year 9999, in Unix seconds): beyond, the
/// milliseconds it counts in would not fit the databases' integers.
const MAX_UNIX_SECS: u64 = 253_402_300_799;
/// Longest `emptyTimeoutSecs` accepted: ten years.
pub const MAX_EMPTY_TIMEOUT_SECS: u64 = 10 * 365 * 24 * 3600;

/// An HTTP error with the body `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    fn room_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::RoomNotFound,
            "no such room",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            message,
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::RoomExists,
                "a room with this id exists already",
            ),
            e => {
                tracing::error!(error = &e as &dyn std::error::Error, "store failure");
                Self::unavailable("the room store is unavailable; retry")
            }
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    code: ErrorCode,
    /// For people: never matched on (the code is stable, the text is not).
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Turns every error answer that is not our JSON body yet (axum's own rejections of a path, a
/// query or a method, hyper's, a handler's plain status) into `{"error": {"code", "message"}}`,
/// keeping its status and headers; 422 becomes 400 (bad input is bad input).
pub async fn json_errors(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4 << 10)
        .await
        .unwrap_or_default();
    let mut message: String = String::from_utf8_lossy(&text)
        .trim()
        .chars()
        .take(300)
        .collect();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_lowercase();
    }
    let (status, code) = match status {
        StatusCode::UNPROCESSABLE_ENTITY => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
        StatusCode::UNAUTHORIZED => (status, ErrorCode::Unauthorized),
        StatusCode::FORBIDDEN => (status, ErrorCode::Forbidden),
        StatusCode::NOT_FOUND => (status, ErrorCode::NotFound),
        StatusCode::PAYLOAD_TOO_LARGE => (status, ErrorCode::TooLarge),
        StatusCode::TOO_MANY_REQUESTS => (status, ErrorCode::RateLimited),
        StatusCode::SERVICE_UNAVAILABLE => (status, ErrorCode::Unavailable),
        s if s.is_server_error() => (s, ErrorCode::Internal),
        s => (s, ErrorCode::BadRequest),
    };
    let mut res = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            res.headers_mut().append(name, value.clone());
        }
    }
    res
}

/// Refuses a request whose declared body exceeds the limit before reading any of it (the body
/// limit alone would read up to the limit first, from a client that may never send it).
pub async fn refuse_declared_oversize(
    State(limit): State<usize>,
    req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("request body larger than {limit} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Reads a request's body within `http_request_timeout_secs`: a client that trickles it gets
/// 408, one that sends more than the route's `DefaultBodyLimit` 413 (and with
/// [`refuse_declared_oversize`] in front, one that declares more gets 413 before anything is
/// read).
pub async fn read_body(state: &AppState, req: Request) -> Result<axum::body::Bytes, ApiError> {
    let within = state.config.limits.http_request_timeout();
    match tokio::time::timeout(within, axum::body::Bytes::from_request(req, state)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Err(_elapsed) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::BadRequest,
            format!(
                "the request body did not arrive within {} s",
                within.as_secs()
            ),
        )),
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::new(
                rejection.status(),
                ErrorCode::TooLarge,
                "request body too large",
            ))
        }
        // The body broke off: the client is most likely gone.
        Ok(Err(rejection)) => Err(ApiError::bad_request(rejection.body_text())),
    }
}

/// `Json` whose rejections use our error body.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T> FromRequest<AppState> for ApiJson<T>
where
    Json<T>: FromRequest<AppState, Rejection = JsonRejection>,
{
    type Rejection = ApiError;

    /// Reads the body within `http_request_timeout_secs` (a client that trickles it gets 408);
    /// the handler's own work is not under that clock, so it is never cut halfway.
    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.config.limits.http_request_timeout();
        let read = tokio::time::timeout(limit, Json::<T>::from_request(req, state)).await;
        match read {
            Ok(Ok(Json(v))) => Ok(Self(v)),
            Err(_elapsed) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                format!(
                    "the request body did not arrive within {} s",
                    limit.as_secs()
                ),
            )),
            Ok(Err(rejection)) => {
                let status = rejection.status();
                Err(match status {
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        ApiError::new(status, ErrorCode::TooLarge, "request body too large")
                    }
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                        status,
                        ErrorCode::BadRequest,
                        "expected Content-Type: application/json",
                    ),
                    // Syntax and data errors alike are the client's: 400.
                    _ => ApiError::bad_request(rejection.body_text()),
                })
            }
        }
    }
}

/// The API's routes for backends, behind the bearer secret, and their OpenAPI document: each
/// route is registered with its `#[utoipa::path]`, so the document lists exactly the routes the
/// router has (`GET /v1/openapi.json` serves it, see [`openapi`]).
pub fn routes(state: AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(create_room, list_rooms))
        .routes(routes!(get_room, update_room, delete_room))
        .routes(routes!(room_peers))
        .routes(routes!(remove_peer))
        .routes(routes!(send_message))
        .routes(routes!(create_token))
        .routes(routes!(room_calls))
        .routes(routes!(get_call))
        .routes(routes!(usage))
        .route_layer(middleware::from_fn_with_state(state, require_secret))
        .split_for_parts();
    // (After the routes: a modifier of the derive runs before they are added.)
    utoipa::Modify::modify(&Common, &mut doc);
    (router, doc)
}

/// The document's frame: what is not a route (info, the bearer scheme, the errors every
/// route of the API can answer).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "BlueCam HTTP API",
        description = "For the app's own backend: rooms, tokens, peers, call history and usage \
            (docs/http-api.md). Every request carries `Authorization: Bearer <API secret>`; \
            every error has the body `{\"error\": {\"code\", \"message\"}}`. The clients' \
            protocol (`/v1/ws`, `/v1/http/*`) is in docs/protocol.md.",
        license(name = "MIT OR Apache-2.0"),
    ),
    security(("bearer" = [])),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// Adds the bearer scheme and, to every operation, the errors any route can answer.
struct Common;

impl utoipa::Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            Ref, ResponseBuilder,
            security::{Http, HttpAuthScheme, SecurityScheme},
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        let error = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        let common = [
            (
                "400",
                "bad input (`bad_request`): invalid JSON, an unknown field, a value out of range",
            ),
            ("401", "missing or wrong API secret (`unauthorized`)"),
            ("413", "body too large (`too_large`)"),
            (
                "500",
                "a server fault (`internal`); details only in the server's log",
            ),
            (
                "503",
                "a backing store does not answer (`unavailable`); retry",
            ),
        ];
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for (status, what) in common {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(what).into());
                }
            }
        }
    }
}

/// The OpenAPI 3.1 document of [`routes`], as served at `GET /v1/openapi.json`.
pub fn openapi(doc: &utoipa::openapi::OpenApi) -> String {
    doc.to_pretty_json().unwrap_or_default()
}

async fn require_secret(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, secret)| secret);
    match presented {
        Some(secret) if state.secret.matches(secret.trim()) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "wrong API secret",
        )
        .into_response(),
        None => {
            let mut res = ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "missing Authorization: Bearer <API secret>",
            )
            .into_response();
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            res
        }
    }
}

/// The body of `POST /v1/rooms`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRoom {
    /// 1 to 128 of `A-Z a-z 0-9 - _ .`; default: 128 random bits.
    id: Option<String>,
    /// At most 1024 bytes.
    name: Option<String>,
    /// At most 1024 bytes.
    description: Option<String>,
    owner: Option<String>,
    /// When set, only the owner and these identities may join (at most 1000).
    members: Option<Vec<String>>,
    /// 1 to the server's `max_peers_per_room` (its default).
    max_peers: Option<u32>,
    /// Delete the room once it has been empty this long (up to ten years); default never.
    empty_timeout_secs: Option<u64>,
    /// Any JSON up to 16 KiB.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Box<RawValue>>,
    /// Let one identity hold several seats at once; default false (a new join replaces).
    multiple_sessions: Option<bool>,
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 - _ ."
        )))
    }
}

fn check_identity(what: &str, identity: &str) -> Result<(), ApiError> {
    if identity.is_empty() || identity.len() > MAX_TEXT_LEN {
        return Err(ApiError::bad_request(format!(
            "{what} must be 1 to {MAX_TEXT_LEN} bytes"
        )));
    }
    Ok(())
}

fn check_text(what: &str, text: Option<&String>) -> Result<(), ApiError> {
    match text {
        Some(t) if t.len() > MAX_TEXT_LEN => Err(ApiError::bad_request(format!(
            "{what} is longer than {MAX_TEXT_LEN} bytes"
        ))),
        _ => Ok(()),
    }
}

fn check_metadata(metadata: Option<&RawValue>) -> Result<(), ApiError> {
    match metadata {
        Some(m) if m.get().len() > MAX_METADATA_BYTES => Err(ApiError::bad_request(format!(
            "metadata is larger than {MAX_METADATA_BYTES} bytes"
        ))),
        _ => Ok(()),
    }
}

/// Runs a change in a task of its own, so a client that hangs up mid-request cannot stop it
/// halfway (between the store and the driver); `what` names it in the answer and the log if
/// the task itself fails.
async fn in_own_task<T: Send + 'static>(
    what: &'static str,
    change: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(change)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "{what} task failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                format!("the {what} failed"),
            )
        })?
        .map_err(ApiError::from)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Creates a room.
#[utoipa::path(post, path = "/v1/rooms", tag = "rooms", request_body = CreateRoom,
    responses(
        (status = 201, description = "the room", body = Room),
        (status = 409, description = "the id is taken (`room_exists`)", body = ErrorBody),
    ))]
async fn create_room(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateRoom>,
) -> Result<(StatusCode, Json<Room>), ApiError> {
    let room = body.into_room(state.config.limits.max_peers_per_room, unix_now())?;
    state.store.create_room(room.clone()).await?;
    if let Some(h) = &state.history {
        h.recorder
            .record(crate::persist::history::Event::RoomCreated {
                room: Box::new(room.clone()),
                at_ms: crate::persist::history::now_ms(),
            });
    }
    tracing::info!(room = %room.id, "room created");
    Ok((StatusCode::CREATED, Json(room)))
}

impl CreateRoom {
    /// Checks every field and makes the room (a random id when none is given).
    pub fn into_room(self, max_peers_cap: u32, now: u64) -> Result<Room, ApiError> {
        let body = self;
        let id = match body.id {
            Some(id) => {
                check_id("id", &id)?;
                id
            }
            None => crate::auth::random_id(16),
        };
        check_text("name", body.name.as_ref())?;
        check_text("description", body.description.as_ref())?;
        if let Some(owner) = &body.owner {
            check_identity("owner", owner)?;
        }
        if let Some(members) = &body.members {
            if members.len() > MAX_MEMBERS {
                return Err(ApiError::bad_request(format!(
                    "at most {MAX_MEMBERS} members"
                )));
            }
            for m in members {
                check_identity("a member", m)?;
            }
        }
        check_metadata(body.metadata.as_deref())?;
        let cap = max_peers_cap;
        let max_peers = body.max_peers.unwrap_or(cap);
        if max_peers == 0 || max_peers > cap {
            return Err(ApiError::bad_request(format!(
                "maxPeers must be between 1 and {cap}"
            )));
        }
        if let Some(t) = body.empty_timeout_secs
            && t > MAX_EMPTY_TIMEOUT_SECS
        {
            return Err(ApiError::bad_request(format!(
                "emptyTimeoutSecs must be at most {MAX_EMPTY_TIMEOUT_SECS}"
            )));
        }
        Ok(Room {
            id: RoomId::new(id),
            name: body.name,
            description: body.description,
            owner: body.owner.map(Identity::new),
            members: body
                .members
                .map(|m| m.into_iter().map(Identity::new).collect()),
            max_peers,
            empty_timeout_secs: body.empty_timeout_secs,
            metadata: body.metadata,
            created_at: now,
            peer_count: 0,
            multiple_sessions: body.multiple_sessions.unwrap_or(false),
            removed: Default::default(),
        })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Rooms this identity owns or is a member of.
    member: Option<String>,
    /// Rooms this identity owns.
    owner: Option<String>,
    /// Rooms per page (default 100, at most 1000).
    limit: Option<usize>,
    /// Where the page starts: the `nextCursor` of the page before.
    cursor: Option<String>,
}

/// A page of rooms.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct RoomList {
    rooms: Vec<Room>,
    /// Present when more rooms follow: pass it as `cursor` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Rooms per page by default, and at most.
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1000;

/// A page's position: the last room of the page before, by (creation time, id), the order
/// of every list. Opaque to clients (base64url of `created_at.id`); stable while rooms are
/// created and deleted, since it names a place in the order rather than a count.
fn encode_cursor(room: &Room) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}.{}", room.created_at, room.id))
}

fn decode_cursor(text: &str) -> Option<(u64, String)> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (at, id) = raw.split_once('.')?;
    Some((at.parse().ok()?, id.to_owned()))
}

/// Lists rooms, oldest first, in pages.
#[utoipa::path(get, path = "/v1/rooms", tag = "rooms", params(ListQuery),
    responses((status = 200, description = "a page of rooms", body = RoomList)))]
async fn list_rooms(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RoomList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(PAGE_DEFAULT);
    if limit == 0 || limit > PAGE_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {PAGE_MAX}"
        )));
    }
    let after = match query.cursor.as_deref() {
        Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::bad_request("invalid cursor"))?),
        None => None,
    };
    let mut rooms = state.store.rooms(query.member.map(Identity::new)).await?;
    if let Some(owner) = query.owner.map(Identity::new) {
        rooms.retain(|r| r.owner.as_ref() == Some(&owner));
    }
    // Every store lists oldest first (creation time, then id); the page starts after the cursor.
    rooms.sort_by(|a, b| (a.created_at, a.id.as_str()).cmp(&(b.created_at, b.id.as_str())));
    if let Some((at, id)) = &after {
        rooms.retain(|r| (r.created_at, r.id.as_str()) > (*at, id.as_str()));
    }
    let next_cursor = (rooms.len() > limit).then(|| encode_cursor(&rooms[limit - 1]));
    rooms.truncate(limit);
    fill_peer_counts(&state, &mut rooms).await?;
    Ok(Json(RoomList { rooms, next_cursor }))
}

/// Peer counts from the cluster directory, or from this node's driver on a single node.
async fn fill_peer_counts(state: &AppState, rooms: &mut [Room]) -> Result<(), ApiError> {
    let ids = rooms.iter().map(|r| r.id.clone()).collect();
    match state.broker.peer_counts(ids).await {
        Ok(Some(counts)) => {
            for (room, count) in rooms.iter_mut().zip(counts) {
                room.peer_count = count;
            }
        }
        Ok(None) => {
            for room in rooms.iter_mut() {
                room.peer_count = state.driver.peer_count(&room.id) as u32;
            }
        }
        Err(e) => return Err(StoreError::from(e).into()),
    }
    Ok(())
}

async fn load_room(state: &AppState, id: String) -> Result<Room, ApiError> {
    let id = RoomId::new(id);
    let mut room = state
        .store
        .room(id)
        .await?
        .ok_or_else(ApiError::room_not_found)?;
    fill_peer_counts(state, std::slice::from_mut(&mut room)).await?;
    Ok(room)
}

/// One room.
#[utoipa::path(get, path = "/v1/rooms/{id}", tag = "rooms", params(("id" = String, Path, description = "the room's id")),
    responses(
        (status = 200, description = "the room", body = Room),
        (status = 404, description = "no such room (`room_not_found`)", body = ErrorBody),
    ))]
async fn get_room(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Room>, ApiError> {
    Ok(Json(load_room(&state, id).await?))
}

/// The body of `PATCH /v1/rooms/{id}`: the fields to change (absent: unchanged; `null`
/// clears an optional one). The id, the owner, the creation time and `multipleSessions` stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateRoom {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    description: Option<Option<String>>,
    /// `null`: no member list any more.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    members: Option<Option<Vec<String>>>,
    /// (A room always has a maximum: `null` is refused.)
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = u32)]
    max_peers: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    empty_timeout_secs: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Option<Box<RawValue>>>,
}

/// A field that is there, `null` included (`Some(None)`), as against one left out (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Changes a room: checked like a new one, written over it. Joins from now on follow the new
/// settings (maximum, members); peers in the room stay. Two changes at once: the last wins.
#[utoipa::path(patch, path = "/v1/rooms/{id}", tag = "rooms", params(("id" = String, Path, description = "the room's id")),
    request_body = UpdateRoom,
    responses(
        (status = 200, description = "the changed room", body = Room),
        (status = 404, description = "no such room (`room_not_found`)", body = ErrorBody),
    ))]
async fn update_room(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateRoom>,
) -> Result<Json<Room>, ApiError> {
    if body.max_peers == Some(None) {
        return Err(ApiError::bad_request("maxPeers cannot be null"));
    }
    let room = state
        .store
        .room(RoomId::new(id))
        .await?
        .ok_or_else(ApiError::room_not_found)?;
    let merged = CreateRoom {
        id: Some(room.id.to_string()),
        name: body.name.unwrap_or(room.name),
        description: body.description.unwrap_or(room.description),
        owner: room.owner.map(|o| o.to_string()),
        members: body.members.unwrap_or_else(|| {
            room.members
                .map(|m| m.iter().map(ToString::to_string).collect())
        }),
        max_peers: Some(body.max_peers.flatten().unwrap_or(room.max_peers)),
        empty_timeout_secs: body.empty_timeout_secs.unwrap_or(room.empty_timeout_secs),
        metadata: body.metadata.unwrap_or(room.metadata),
        multiple_sessions: Some(room.multiple_sessions),
    };
    let mut updated = merged.into_room(state.config.limits.max_peers_per_room, room.created_at)?;
    if !state.store.update_room(updated.clone()).await? {
        return Err(ApiError::room_not_found());
    }
    tracing::info!(room = %updated.id, "room changed");
    fill_peer_counts(&state, std::slice::from_mut(&mut updated)).await?;
    Ok(Json(updated))
}

/// Deletes a room: every peer inside gets `room_closed` and close 4040.
#[utoipa::path(delete, path = "/v1/rooms/{id}", tag = "rooms", params(("id" = String, Path, description = "the room's id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such room (`room_not_found`)", body = ErrorBody),
    ))]
async fn delete_room(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = RoomId::new(id);
    // In a task of its own, so a client that hangs up mid-request cannot leave the room
    // deleted from the store and still open in the driver.
    let deleted = {
        let (state, id) = (state.clone(), id.clone());
        in_own_task("room deletion", async move {
            let deleted = state.store.delete_room(id.clone()).await?;
            if deleted {
                state.driver.close_room(&id, RoomClosedReason::Deleted);
            }
            Ok::<_, crate::persist::store::StoreError>(deleted)
        })
        .await?
    };
    if !deleted {
        return Err(ApiError::room_not_found());
    }
    if let Some(h) = &state.history {
        h.recorder
            .record(crate::persist::history::Event::RoomDeleted {
                room: id.clone(),
                reason: "deleted",
                at_ms: crate::persist::history::now_ms(),
            });
    }
    tracing::info!(room = %id, "room deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A page of a room's peers.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct PeerList {
    peers: Vec<PeerEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    /// Items per page (default 100, at most 1000).
    limit: Option<usize>,
    /// Where the page starts: the `nextCursor` of the page before.
    cursor: Option<String>,
}

/// A page of a room's peers starts after the peer the cursor names (by id): a peer list is a
/// room's, at most `max_peers_per_room` long. If that peer left meanwhile, the page starts at
/// the first peer that joined after it could have (the list keeps join order), so nobody is
/// listed twice.
fn peers_page(
    peers: Vec<PeerEntry>,
    query: PageQuery,
) -> Result<(Vec<PeerEntry>, Option<String>), ApiError> {
    use base64::Engine as _;
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let limit = query.limit.unwrap_or(PAGE_DEFAULT);
    if limit == 0 || limit > PAGE_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {PAGE_MAX}"
        )));
    }
    // The cursor: base64url of "seen count.last id".
    let start = match query.cursor.as_deref() {
        None => 0,
        Some(c) => {
            let raw = b64
                .decode(c)
                .ok()
                .and_then(|r| String::from_utf8(r).ok())
                .ok_or_else(|| ApiError::bad_request("invalid cursor"))?;
            let (seen, last) = raw
                .split_once('.')
                .and_then(|(n, id)| Some((n.parse::<usize>().ok()?, id.to_owned())))
                .ok_or_else(|| ApiError::bad_request("invalid cursor"))?;
            match peers.iter().position(|p| p.info.id.as_str() == last) {
                Some(i) => i + 1,
                None => seen.min(peers.len()),
            }
        }
    };
    let mut page: Vec<PeerEntry> = peers.into_iter().skip(start).collect();
    let next = (page.len() > limit).then(|| {
        let last = &page[limit - 1];
        b64.encode(format!("{}.{}", start + limit, last.info.id))
    });
    page.truncate(limit);
    Ok((page, next))
}

/// A peer as the API lists it: its info plus whether its WebSocket is up (false while it is
/// away within the resume window).
#[derive(Serialize, ToSchema)]
struct PeerEntry {
    #[serde(flatten)]
    info: bluecam_proto::PeerInfo,
    /// False while its connection is down within the resume window.
    connected: bool,
}

/// A room's peers, in join order, in pages.
#[utoipa::path(get, path = "/v1/rooms/{id}/peers", tag = "peers", params(("id" = String, Path, description = "the room's id"), PageQuery),
    responses(
        (status = 200, description = "a page of peers", body = PeerList),
        (status = 404, description = "no such room (`room_not_found`)", body = ErrorBody),
    ))]
async fn room_peers(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PeerList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let room = load_room(&state, id).await?;
    let presence = match state.broker.presence(room.id.clone()).await {
        Ok(Some(peers)) => crate::directory::presence(peers, &state.driver.peers(&room.id)),
        Ok(None) => state.driver.peers(&room.id),
        Err(e) => return Err(StoreError::from(e).into()),
    };
    let peers = presence
        .into_iter()
        .map(|(info, connected)| PeerEntry { info, connected })
        .collect();
    let (peers, next_cursor) = peers_page(peers, query)?;
    Ok(Json(PeerList { peers, next_cursor }))
}

/// The answer to `DELETE /v1/rooms/{id}/peers/{peerId}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Removal {
    /// The peer removed.
    peer: bluecam_proto::PeerInfo,
    /// When (Unix seconds): tokens of its identity for this room issued then or before are
    /// refused from now on; one issued later (`iat` above this) opens the room again.
    removed_at: u64,
}

/// Removes a peer: it leaves with reason `kicked`, its connection closes with the `kicked`
/// close code, and the tokens of its identity for this room issued until now stop working.
/// On a cluster, the node that holds it removes it.
#[utoipa::path(delete, path = "/v1/rooms/{id}/peers/{peer}", tag = "peers",
    params(("id" = String, Path, description = "the room's id"), ("peer" = String, Path, description = "the peer's id")),
    responses(
        (status = 200, description = "removed", body = Removal),
        (status = 404, description = "no such room (`room_not_found`) or peer (`unknown_peer`)",
            body = ErrorBody),
    ))]
async fn remove_peer(
    State(state): State<AppState>,
    Path((id, peer)): Path<(String, String)>,
) -> Result<Json<Removal>, ApiError> {
    let room = load_room(&state, id).await?;
    let peer = bluecam_proto::PeerId::new(peer);
    let presence = match state.broker.presence(room.id.clone()).await {
        Ok(Some(peers)) => peers,
        Ok(None) => state.driver.peers(&room.id),
        Err(e) => return Err(StoreError::from(e).into()),
    };
    let Some((info, _)) = presence.into_iter().find(|(p, _)| p.id == peer) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownPeer,
            "no such peer in this room",
        ));
    };
    let removed_at = unix_now();
    // In a task of its own, so a client that hangs up mid-request cannot leave the identity
    // refused and the peer still in the room. The refusal first: the peer cannot come back
    // (a resume presents its token too) from the moment it is out.
    let removal = {
        let (state, room, identity) = (state.clone(), room.id.clone(), info.identity.clone());
        in_own_task("peer removal", async move {
            if !state
                .store
                .remove_identity(room.clone(), identity, removed_at)
                .await?
            {
                return Ok(None);
            }
            let kick = state.broker.kick(room.clone(), peer.clone()).await?;
            if kick == crate::directory::Kick::Here {
                let (_, vacated) = state.driver.kick(&room, &peer);
                state.touch_rooms(vacated).await;
            }
            Ok::<_, StoreError>(Some(kick))
        })
        .await?
    };
    let Some(kick) = removal else {
        return Err(ApiError::room_not_found());
    };
    tracing::info!(room = %room.id, peer = %info.id, identity = %info.identity, ?kick, "peer removed");
    Ok(Json(Removal {
        peer: info,
        removed_at,
    }))
}

/// The body of `POST /v1/rooms/{id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendMessage {
    /// The message's type, as `sendMessage(type, data)` has it: 1 to 1024 bytes.
    #[serde(rename = "type")]
    msg_type: String,
    /// Any JSON (default `null`).
    #[serde(default)]
    #[schema(value_type = Object)]
    data: Option<Box<RawValue>>,
    /// The peers to send it to; default every peer in the room.
    to: Option<Vec<String>>,
}

/// The answer to `POST /v1/rooms/{id}/messages`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Sent {
    /// The peers it was handed to, each of which gets it once, in order with the room's other
    /// messages from the backend, acknowledged end to end (a connection lost meanwhile gets it
    /// again after its resume).
    sent: Vec<bluecam_proto::PeerId>,
    /// Peers it could not be handed to: not in the room, or whose node is gone (waiting for
    /// their resume elsewhere).
    unreachable: Vec<bluecam_proto::PeerId>,
}

/// Sends a message from the backend to every peer of the room or to the peers `to`: the
/// SDK's `onMessage` gets it with `from.server === true`.
#[utoipa::path(post, path = "/v1/rooms/{id}/messages", tag = "peers",
    params(("id" = String, Path, description = "the room's id")),
    request_body = SendMessage,
    responses(
        (status = 202, description = "accepted: handed to these peers", body = Sent),
        (status = 404, description = "no such room (`room_not_found`)", body = ErrorBody),
    ))]
async fn send_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SendMessage>,
) -> Result<(StatusCode, Json<Sent>), ApiError> {
    check_identity("type", &body.msg_type)?;
    if body.to.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::bad_request(
            "to must name at least one peer (leave it out for every peer)",
        ));
    }
    let room = state
        .store
        .room(RoomId::new(id))
        .await?
        .ok_or_else(ApiError::room_not_found)?;
    let data = body
        .data
        .as_deref()
        .map_or_else(|| "null".to_owned(), |d| d.get().to_owned());
    let wire = serde_json::to_string(&bluecam_proto::ServerMessageBody {
        msg_type: std::borrow::Cow::Borrowed(&body.msg_type),
        data: &RawValue::from_string(data).map_err(|_| ApiError::bad_request("invalid data"))?,
    })
    .map_err(|_| ApiError::bad_request("invalid data"))?;
    let wire = RawValue::from_string(wire).map_err(|_| ApiError::bad_request("invalid data"))?;
    let to: Option<Vec<bluecam_proto::PeerId>> = body
        .to
        .map(|t| t.into_iter().map(bluecam_proto::PeerId::new).collect());
    let sent = in_own_task("message hand-out", async move {
        let routed = state
            .broker
            .server_message(room.id.clone(), to.clone(), wire.clone())
            .await?;
        let here = match state.broker.node() {
            None => to.clone(),
            Some(_) => Some(routed.here.clone()),
        };
        let (mut sent, vacated) = if here.as_ref().is_some_and(Vec::is_empty) {
            (Vec::new(), Vec::new())
        } else {
            state.driver.server_message(&room.id, here.clone(), &wire)
        };
        state.touch_rooms(vacated).await;
        let mut unreachable = routed.unreachable;
        if let Some(here) = here {
            unreachable.extend(here.into_iter().filter(|p| !sent.contains(p)));
        }
        sent.extend(routed.elsewhere);
        Ok::<_, StoreError>(Sent { sent, unreachable })
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(sent)))
}

/// The body of `POST /v1/rooms/{id}/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateToken {
    /// The user (`sub`): 1 to 1024 bytes.
    identity: String,
    /// A display name the other peers see.
    name: Option<String>,
    /// Lifetime: 1 to the server's `max_token_ttl_secs`; default 3600.
    ttl_secs: Option<u64>,
    permissions: Option<Permissions>,
    /// Any JSON up to 16 KiB, which the other peers see.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Box<RawValue>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenResponse {
    token: String,
    /// Seconds since the Unix epoch.
    expires_at: u64,
}

/// Mints a token for one identity in this room.
#[utoipa::path(post, path = "/v1/rooms/{id}/tokens", tag = "tokens", params(("id" = String, Path, description = "the room's id")),
    request_body = CreateToken,
    responses(
        (status = 201, description = "the token", body = TokenResponse),
        (status = 404, description = "no such room (`room_not_found`)", body = ErrorBody),
    ))]
async fn create_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    let limits = (
        state.config.default_token_ttl_secs,
        state.config.max_token_ttl_secs,
    );
    // Checked before the room is looked up: bad input is a 400 whether the room exists or not.
    let mut claims = body.into_claims(RoomId::new(id.clone()), limits, unix_now())?;
    let room = load_room(&state, id).await?;
    // A token of an identity removed from the room this very second is issued for the next
    // one: `iat` counts whole seconds, and the removal refuses every token issued up to its
    // own second.
    if let Some(at) = room.removed.get(&claims.sub)
        && claims.iat <= *at
    {
        claims.exp = claims.exp.saturating_add(at + 1 - claims.iat);
        claims.iat = at + 1;
    }
    issue_token(&state, &claims)
}

impl CreateToken {
    /// Checks every field and makes the token's claims; `ttl` is (default, largest).
    pub fn into_claims(self, room: RoomId, ttl: (u64, u64), now: u64) -> Result<Claims, ApiError> {
        check_identity("identity", &self.identity)?;
        check_text("name", self.name.as_ref())?;
        check_metadata(self.metadata.as_deref())?;
        let max_ttl = ttl.1;
        if let Some(t) = self.ttl_secs
            && (t == 0 || t > max_ttl)
        {
            return Err(ApiError::bad_request(format!(
                "ttlSecs must be between 1 and {max_ttl}"
            )));
        }
        let ttl = self.ttl_secs.unwrap_or(ttl.0).clamp(1, max_ttl.max(1));
        Ok(Claims {
            sub: Identity::new(self.identity),
            room,
            exp: now.saturating_add(ttl),
            iat: now,
            nbf: None,
            name: self.name,
            metadata: self.metadata,
            permissions: self.permissions,
        })
    }
}

/// Signs claims into the 201 answer of a token endpoint.
pub(crate) fn issue_token(
    state: &AppState,
    claims: &Claims,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    let token = state.secret.mint(claims).map_err(|e| {
        tracing::error!(error = %e, "token signing failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "could not sign the token",
        )
    })?;
    Ok((
        StatusCode::CREATED,
        Json(TokenResponse {
            token,
            expires_at: claims.exp,
        }),
    ))
}

// ---- call history (history.rs) ---------------------------------------------------------

/// The node's history, or 501 where there is none (a cluster without PostgreSQL).
fn history(state: &AppState) -> Result<crate::History, ApiError> {
    state.history.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            ErrorCode::Unavailable,
            "call history needs a database: a cluster keeps it in PostgreSQL (--database)",
        )
    })
}

/// A page of calls.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct CallList {
    calls: Vec<crate::persist::history::CallRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// A room's calls, newest first, in pages.
#[utoipa::path(get, path = "/v1/rooms/{id}/calls", tag = "history", params(("id" = String, Path, description = "the room's id"), PageQuery),
    responses(
        (status = 200, description = "a page of calls", body = CallList),
        (status = 404, description = "no such room (`room_not_found`)", body = ErrorBody),
        (status = 501, description = "no history here: a cluster node without a database",
            body = ErrorBody),
    ))]
async fn room_calls(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query_: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CallList>, ApiError> {
    let Query(page) = query_.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = page.limit.unwrap_or(PAGE_DEFAULT);
    if limit == 0 || limit > PAGE_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {PAGE_MAX}"
        )));
    }
    let h = history(&state)?;
    let room = RoomId::new(id);
    // The cursor names the last call of the page before (base64url of its id).
    let after = match page.cursor.as_deref() {
        Some(c) => {
            use base64::Engine as _;
            Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| ApiError::bad_request("invalid cursor"))?,
            )
        }
        None => None,
    };
    let r = room.to_string();
    let found = h
        .backend
        .run(move |db| crate::persist::history::calls(db, &r, limit + 1, after.as_deref()))
        .await?;
    let mut calls = found.ok_or_else(|| ApiError::bad_request("invalid cursor"))?;
    if calls.is_empty() && page.cursor.is_none() {
        // No calls: a room that exists has none yet; one that never did is not found (a
        // deleted room's history stays readable).
        state
            .store
            .room(room)
            .await?
            .ok_or_else(ApiError::room_not_found)?;
    }
    let next_cursor = (calls.len() > limit).then(|| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&calls[limit - 1].id)
    });
    calls.truncate(limit);
    Ok(Json(CallList { calls, next_cursor }))
}

/// One call with its participants.
#[utoipa::path(get, path = "/v1/calls/{id}", tag = "history",
    params(("id" = String, Path, description = "the call's id")),
    responses(
        (status = 200, description = "the call", body = crate::persist::history::CallRecord),
        (status = 404, description = "no such call (`not_found`)", body = ErrorBody),
        (status = 501, description = "no history here: a cluster node without a database",
            body = ErrorBody),
    ))]
async fn get_call(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::persist::history::CallRecord>, ApiError> {
    let h = history(&state)?;
    h.backend
        .run(move |db| crate::persist::history::call_record(db, &id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such call"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    /// Start of the interval, Unix seconds (included). Required.
    from: Option<u64>,
    /// End of the interval, Unix seconds (excluded). Required.
    to: Option<u64>,
    /// Only rooms this identity owned.
    owner: Option<String>,
    /// Only rooms this identity owned or was a member of.
    member: Option<String>,
}

/// Calls and their time in an interval, per room.
#[utoipa::path(get, path = "/v1/usage", tag = "history", params(UsageQuery),
    responses(
        (status = 200, description = "the report", body = crate::persist::history::Usage),
        (status = 501, description = "no history here: a cluster node without a database",
            body = ErrorBody),
    ))]
async fn usage(
    State(state): State<AppState>,
    query_: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<crate::persist::history::Usage>, ApiError> {
    use crate::persist::history::UsageFilter;
    let Query(q) = query_.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (Some(from), Some(to)) = (q.from, q.to) else {
        return Err(ApiError::bad_request(
            "from and to are required (Unix seconds; the interval is [from, to))",
        ));
    };
    if to <= from {
        return Err(ApiError::bad_request("to must be after from"));
    }
    if to > MAX_UNIX_SECS {
        return Err(ApiError::bad_request(format!(
            "to must be at most {MAX_UNIX_SECS} (the end of year 9999)"
        )));
    }
    let filter = match (q.owner, q.member) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give owner or member, not both"));
        }
        (Some(o), None) => UsageFilter::Owner(o),
        (None, Some(m)) => UsageFilter::Member(m),
        (None, None) => UsageFilter::All,
    };
    let h = history(&state)?;
    Ok(Json(
        h.backend
            .run(move |db| crate::persist::history::usage(db, from, to, &filter))
            .await?,
    ))
}
