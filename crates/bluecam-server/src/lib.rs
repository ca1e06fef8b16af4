//! The BlueCam server as a library: [`Server::bind`] then [`Server::run`] (or [`run`]), so
//! `main` stays thin and tests start real servers on port 0.
//!
//! Its folders are its parts: [`front`] (the HTTP front: accept loop and caps, static files and
//! the demo, STUN), [`api`] (the HTTP API for backends), [`transport`] (the connection loop and
//! the WebSocket and HTTP transports), [`driver`] (the live rooms: the core `Hub` behind
//! one lock), [`directory`] (the other nodes: the `Broker` trait, in-process or Redis) and
//! [`persist`] (rooms and sessions in SQLite, call history, the webhook outbox). [`config`]
//! and [`metrics`] depend on nothing else here.

pub mod api;
pub mod auth;
pub mod config;
pub mod directory;
pub mod driver;
pub mod front;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod persist;
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod testkit;
pub mod transport;

pub use auth::{Claims, Secret, SecretOrigin};
pub use config::{Config, LimitsConfig};
use front::{serve, stun, web};
use persist::{history, store, webhooks};
use transport::{http, ws};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use bluecam_proto::{ErrorCode, RoomClosedReason, RoomId};
use persist::store::{SqliteStore, Store, StoreError};
use std::{
    net::SocketAddr,
    ops::Deref,
    sync::{Arc, atomic::AtomicUsize},
    time::{Duration, Instant},
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How long shutdown waits for connections to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
pub use auth::MIN_SECRET_LEN;

/// A server that could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot prepare the data dir: {0}")]
    DataDir(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the API secret must be at least {MIN_SECRET_LEN} characters (a token holder can test \
         guesses of it offline); generate one with `openssl rand -base64 32`, or leave it unset \
         on a single node to have one generated"
    )]
    WeakSecret,
    #[error("cannot load the TLS certificate or key: {0}")]
    Tls(std::io::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cluster mode needs the API secret given (--api-secret): every node must share it")]
    ClusterSecret,
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] directory::BrokerError),
    /// A setting that cannot be used (the message names it).
    #[error(transparent)]
    Config(#[from] config::Invalid),
    #[error("cannot listen on the metrics address {0}: {1}")]
    MetricsBind(SocketAddr, std::io::Error),
    #[error("cannot answer STUN on {0} (UDP): {1}")]
    StunBind(SocketAddr, std::io::Error),
}

/// What every handler and connection task shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub secret: Secret,
    pub store: Arc<dyn Store>,
    /// The other nodes of the cluster ([`directory::LocalBroker`] on a single node).
    pub broker: Arc<dyn directory::Broker>,
    pub driver: driver::Driver,
    pub metrics: metrics::Metrics,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Tracks connection and background tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Open WebSocket connections (bounded by `limits.max_connections`).
    pub connections: AtomicUsize,
    /// Open TCP connections, overall and per source (HTTP and WebSocket alike).
    pub gate: Arc<serve::Gate>,
    /// Single node: the durable session records (flushed before the process exits).
    pub sessions: Option<store::SessionLog>,
    /// The HTTP transport's sessions on this node.
    pub http: http::HttpSessions,
    /// What the demo may still make.
    pub demo: web::DemoQuota,
    /// Single node: the call history and the webhook outbox (history.rs), and the SQLite
    /// store its queries read.
    pub history: Option<History>,
}

/// The call history of a node: where events go, and where they are read.
#[derive(Clone, Debug)]
pub struct History {
    pub recorder: history::Recorder,
    pub backend: history::Backend,
    pub outbox: history::Outbox,
    pub node: history::NodeInfo,
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Cheap to clone: one `Arc`.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Whether a WebSocket from this `Origin` may connect.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let allowed = &self.config.allowed_origins;
        allowed.is_empty() || origin.is_some_and(|o| allowed.iter().any(|a| a == o))
    }

    /// Whether the default demo is on: no `demo` setting, and a local setup (a loopback bind,
    /// and no `public_url` naming another host: behind a reverse proxy the bind is loopback,
    /// yet the server is public). It then serves only its link's browsers (`demo_serves`).
    pub fn default_demo(&self) -> bool {
        self.config.demo.is_none()
            && self.config.bind.ip().is_loopback()
            && self.config.public_url.as_deref().is_none_or(is_local_url)
    }

    /// Whether the demo serves this request. Asked for (`--demo`), to anyone; on by default,
    /// only to a browser on this machine that opened the demo link printed at start (its
    /// cookie carries the key), in a request naming a local host and carrying no proxy's
    /// forwarding header. (A reverse proxy on this host makes a loopback server public and
    /// may not have been given `--public-url`; it may also send neither a public `Host` nor a
    /// forwarding header: the key is what only the operator has.)
    pub fn demo_serves(&self, headers: &axum::http::HeaderMap) -> bool {
        match self.config.demo {
            Some(on) => on,
            None => self.demo_by_link(headers) && self.demo.has_key(headers),
        }
    }

    /// Whether this request may open the default demo with its link (`/?demo=KEY`).
    pub fn demo_by_link(&self, headers: &axum::http::HeaderMap) -> bool {
        self.default_demo() && is_direct_local_request(headers)
    }

    /// Records in the store that these rooms just became empty.
    pub async fn touch_rooms(&self, rooms: Vec<RoomId>) {
        let now = unix_now();
        for room in rooms {
            if let Err(e) = self.store.touch_room(room, now).await {
                tracing::warn!(error = %e, "could not record that a room became empty");
            }
        }
    }
}

/// Headers a proxy adds to say whom it forwards for.
const FORWARDING_HEADERS: [&str; 4] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-real-ip",
];

/// Whether a request names this machine in its `Host` and passed through no proxy that says so.
fn is_direct_local_request(headers: &axum::http::HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    FORWARDING_HEADERS.iter().all(|h| !headers.contains_key(*h))
        && is_local_url(&format!("http://{host}/"))
}

/// Whether a URL names this machine (`localhost`, `*.localhost` or a loopback address); an
/// unparsable one does not.
fn is_local_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: AppState,
    secret_origin: SecretOrigin,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    cluster: Option<(
        Arc<directory::redis::RedisBroker>,
        tokio::sync::mpsc::UnboundedReceiver<bluecam_core::cluster::Step>,
    )>,
    metrics_listener: Option<TcpListener>,
    stun: Option<tokio::net::UdpSocket>,
}

impl Server {
    /// Opens the store and the API secret and takes the listener.
    pub async fn bind(listener: TcpListener, mut config: Config) -> Result<Self, ServerError> {
        fit_connections_to_file_limit(&mut config.limits);
        store::create_data_dir(&config.data_dir).map_err(ServerError::DataDir)?;
        let (secret, secret_origin) = match &config.api_secret {
            Some(s) => (Secret::new(s.clone()), SecretOrigin::Configured),
            None if config.redis_url.is_some() => return Err(ServerError::ClusterSecret),
            None => auth::load_or_create_secret(&config.data_dir).map_err(ServerError::DataDir)?,
        };
        if secret.expose().trim().len() < MIN_SECRET_LEN {
            return Err(ServerError::WeakSecret);
        }
        if config.limits.max_connections > config.limits.max_http_connections {
            tracing::warn!(
                max_connections = config.limits.max_connections,
                max_http_connections = config.limits.max_http_connections,
                "max_connections is above max_http_connections: WebSockets could take every \
                 connection and leave none for the API and health checks"
            );
        }
        for endpoint in &config.webhooks {
            endpoint.validate()?;
        }
        if config.redis_url.is_some()
            && config.database_url.is_none()
            && !config.webhooks.is_empty()
        {
            return Err(ServerError::Config(config::Invalid::new(
                "webhooks in a cluster need PostgreSQL (--database postgres://…): the nodes \
                 share the outbox there",
            )));
        }
        if config.redis_url.is_none() && config.database_url.is_some() {
            return Err(ServerError::Config(config::Invalid::new(
                "--database is for a cluster (with --redis); a single node keeps everything \
                 in its SQLite file",
            )));
        }
        let metrics = metrics::Metrics::new();
        let proxies = crate::front::proxied::Proxies::new(
            &config.trusted_proxies,
            &config.forwarded_header,
            config.proxy_protocol,
        )?;
        if config.proxy_protocol && config.trusted_proxies.is_empty() {
            tracing::warn!(
                "proxy_protocol is on and trusted_proxies is empty: whoever reaches this port \
                 can name any client address in its PROXY header; list your load balancers in \
                 trusted_proxies"
            );
        }
        let gate = Arc::new(serve::Gate::new(
            &config.limits,
            proxies,
            metrics.http_connections.clone(),
        )?);
        // The built-in STUN server: on the HTTP address and port (UDP) unless told otherwise.
        // Taken by something else there, the node runs without it (and says so); an address
        // given on purpose must work.
        let stun = if config.stun {
            let addr = match config.stun_bind {
                Some(addr) => addr,
                None => listener.local_addr().map_err(ServerError::Io)?,
            };
            match tokio::net::UdpSocket::bind(addr).await {
                Ok(socket) => {
                    config.stun_bind = Some(socket.local_addr().map_err(ServerError::Io)?);
                    Some(socket)
                }
                Err(e) if config.stun_bind.is_some() => return Err(ServerError::StunBind(addr, e)),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot answer STUN there; running without");
                    config.stun = false;
                    None
                }
            }
        } else {
            None
        };
        let metrics_listener = match config.metrics_bind {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| ServerError::MetricsBind(addr, e))?,
            ),
            None => None,
        };
        let tls = match &config.tls {
            Some(t) => {
                let loaded = axum_server::tls_rustls::RustlsConfig::from_pem_file(&t.cert, &t.key)
                    .await
                    .map_err(ServerError::Tls)?;
                // HTTP/1.1 only: hyper's HTTP/2 server has no header or idle timeout, so an
                // HTTP/2 connection could stay open silent forever (docs/configuration.md,
                // "Security"). WebSockets are HTTP/1.1 anyway.
                let mut rustls = (*loaded.get_inner()).clone();
                rustls.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(axum_server::tls_rustls::RustlsConfig::from_config(
                    Arc::new(rustls),
                ))
            }
            None => None,
        };
        let mut postgres = None;
        let (store, broker, cluster, sqlite): (Arc<dyn Store>, Arc<dyn directory::Broker>, _, _) =
            match &config.redis_url {
                Some(url) => {
                    let redis = directory::redis::redis_config(url, config.redis_ca.as_deref())?;
                    let node = directory::redis::RedisBroker::connect(
                        redis,
                        Duration::from_secs(config.cluster.node_ttl_secs.max(1)),
                        Duration::from_secs(config.limits.resume_window_secs),
                        config.cluster.publish_queue,
                        metrics.clone(),
                    )
                    .await?;
                    let live: Arc<dyn Store> = Arc::new(node.store());
                    let store: Arc<dyn Store> = match &config.database_url {
                        // Rooms in PostgreSQL, mirrored in Redis for the membership scripts.
                        Some(db) => {
                            let pg = history::postgres::PgStore::connect(db, config.database_pool)
                                .await?;
                            postgres = Some(pg.clone());
                            Arc::new(history::postgres::ClusterRooms { pg, live })
                        }
                        None => {
                            tracing::warn!(
                                "a cluster without --database keeps its rooms in Redis only, \
                                 and has no call history or webhooks"
                            );
                            live
                        }
                    };
                    (store, node.clone(), Some(node), None)
                }
                None => {
                    let sqlite = SqliteStore::open(&config.data_dir)?;
                    (
                        Arc::new(sqlite.clone()),
                        Arc::new(directory::LocalBroker),
                        None,
                        Some(sqlite),
                    )
                }
            };
        // A single node keeps its sessions in SQLite (a cluster keeps them in Redis).
        let sessions = match &sqlite {
            Some(s) => Some(s.session_log().map_err(ServerError::Io)?),
            None => None,
        };
        // A single node records call history and webhook events in its SQLite file, a
        // cluster in PostgreSQL.
        let backend = match (&sqlite, &postgres) {
            (Some(s), _) => Some(history::Backend::Sqlite(s.clone())),
            (None, Some(p)) => Some(history::Backend::Postgres(p.clone())),
            (None, None) => None,
        };
        let history = match backend {
            Some(backend) => {
                let node = history::NodeInfo {
                    node: broker.node().map(ToString::to_string).unwrap_or_default(),
                    dead_after_ms: (config.cluster.node_ttl_secs
                        + config.limits.resume_window_secs)
                        .saturating_mul(1000)
                        .saturating_add(5000),
                };
                let outbox = history::Outbox {
                    subscribers: config
                        .webhooks
                        .iter()
                        .map(|w| history::Subscriber {
                            url: w.url.clone(),
                            events: w.events.clone(),
                        })
                        .collect(),
                    max_pending: config.webhook_outbox_max,
                    pending: Arc::default(),
                    added: Arc::default(),
                    dropped: metrics.webhooks_dropped.clone(),
                };
                let recorder = history::Recorder::start(
                    backend.clone(),
                    outbox.clone(),
                    node.clone(),
                    metrics.clone(),
                )
                .map_err(ServerError::Io)?;
                Some(History {
                    recorder,
                    backend,
                    outbox,
                    node,
                })
            }
            None => None,
        };
        // Cluster: the node's control loop lives in the node; its directory steps go to the
        // cluster's shell, started with the server.
        let (machine, cluster) = match cluster {
            Some(broker) => {
                let (steps, rx) = tokio::sync::mpsc::unbounded_channel();
                let id = broker.id().clone();
                let machine = bluecam_core::cluster::ClusterNode::new(
                    id,
                    Duration::from_secs(config.cluster.node_ttl_secs.max(1)),
                    Duration::from_secs(config.limits.resume_window_secs),
                    Instant::now(),
                );
                (
                    Some(driver::ClusterPart {
                        node: machine,
                        steps,
                    }),
                    Some((broker, rx)),
                )
            }
            None => (None, None),
        };
        let driver = driver::Driver::new(
            config.limits.core(),
            machine,
            config.limits.outbound_queue_bytes,
            config.limits.outbound_queue_frames,
            metrics.clone(),
            broker.clone(),
            sessions.clone(),
            history.as_ref().map(|h| h.recorder.clone()),
        );
        if let Some(sqlite) = &sqlite {
            // Calls survive a restart: every session that had not ended is back, detached,
            // for one resume window from now (docs/architecture.md, "What survives what").
            let stored = sqlite.stored_sessions()?;
            let ids: std::collections::HashSet<_> =
                stored.iter().map(|(_, s)| s.session.clone()).collect();
            if let Some(h) = &history {
                // What a crash left open ends when the node was last alive; what was restored
                // is detached since then.
                history::recover(&h.backend, &h.node, &ids, &h.outbox)?;
            }
            let restored =
                driver.restore(
                    stored
                        .into_iter()
                        .map(|(room, s)| bluecam_core::RestoredSession {
                            room: bluecam_proto::RoomSummary::from(&room),
                            info: s.info,
                            permissions: s.permissions,
                            session: s.session,
                            secret_digest: s.secret_digest,
                        }),
                );
            if restored > 0 {
                tracing::info!(
                    sessions = restored,
                    "sessions restored; their clients can resume"
                );
            }
        }
        let state = AppState(Arc::new(Shared {
            config,
            secret,
            store,
            broker,
            driver,
            metrics,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            connections: AtomicUsize::new(0),
            gate,
            sessions,
            http: http::HttpSessions::default(),
            demo: web::DemoQuota::default(),
            history,
        }));
        Ok(Self {
            listener,
            state,
            secret_origin,
            tls,
            cluster,
            metrics_listener,
            stun,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn secret(&self) -> &Secret {
        &self.state.secret
    }

    pub fn secret_origin(&self) -> SecretOrigin {
        self.secret_origin
    }

    /// Where `/metrics` is served when it has an address of its own (`metrics_bind`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref()?.local_addr().ok()
    }

    /// Whether the demo was asked for (`--demo`), and so serves anyone who reaches the server,
    /// rather than on by default for this machine only.
    pub fn demo_for_anyone(&self) -> bool {
        self.state.config.demo == Some(true)
    }

    /// The default demo's key, for its link (`/?demo=KEY`); `None` when the demo is off or
    /// asked for (then it needs no key).
    pub fn demo_key(&self) -> Option<&str> {
        self.state.default_demo().then(|| self.state.demo.key())
    }

    /// This node's id in the cluster (`None` on a single node).
    pub fn node(&self) -> Option<&bluecam_proto::NodeId> {
        self.state.broker.node()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, tells every connected
    /// client (close 1012, server restarting: resume) and waits up to a few seconds for them.
    /// Sessions are kept: on a single node in the store, in a cluster in Redis.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let state = self.state;
        if let Some((node, steps)) = self.cluster {
            // Requests passed on by other nodes are answered from the subscription's start.
            node.start(
                Arc::new(state.driver.clone()),
                steps,
                http::forwarded_handler(&state),
                &state.tracker,
                state.shutdown.clone(),
            )
            .await?;
        }
        spawn_timers(&state);
        if let Some(h) = &state.history {
            spawn_history(&state, h.clone());
        }
        if let Some(socket) = self.stun {
            state.tracker.spawn(stun::serve(
                socket,
                stun::StunLimits::from(&state.config.limits),
                state.metrics.clone(),
                state.shutdown.clone(),
            ));
        }
        // An external shutdown cancels the server's own token, which stops the front(s) from
        // accepting, and the driver tells every connection (close 1012). (The connections do
        // not each wait on the token: one signal per connection is less to hold and to poll.)
        let inner = state.shutdown.clone();
        let driver = state.driver.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = inner.cancelled() => {}
            }
            inner.cancel();
            driver.kill_all(bluecam_proto::CloseCode::ServiceRestart);
        });
        if let Some(listener) = self.metrics_listener {
            // The same front, with its timeouts and caps, serving `/metrics` alone.
            let metrics = serve::Front {
                listener,
                tls: None,
                router: Router::new()
                    .route("/metrics", get(metrics_page))
                    .fallback(not_found)
                    .method_not_allowed_fallback(method_not_allowed)
                    .layer(axum::middleware::map_response(api::json_errors))
                    .with_state(state.clone()),
                state: state.clone(),
                websockets: false,
            };
            let stop = state.shutdown.clone();
            state
                .tracker
                .spawn(async move { metrics.run(stop, SHUTDOWN_GRACE).await });
        }
        let front = serve::Front {
            listener: self.listener,
            tls: self.tls,
            router: app(state.clone()),
            state: state.clone(),
            websockets: true,
        };
        front.run(state.shutdown.clone(), SHUTDOWN_GRACE).await;
        state.shutdown.cancel();
        state.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within the grace period");
        }
        if let Some(log) = &state.sessions
            && let Err(e) = log.flush().await
        {
            tracing::error!(error = %e, "could not write the last session records");
        }
        if let Some(h) = &state.history {
            // The sessions still open were connected until now.
            h.recorder.record(history::Event::Alive {
                at_ms: history::now_ms(),
            });
            // Bounded: a database that is away must not hold the exit (the writer keeps
            // trying for a minute; what it could not write is lost, and logged).
            match tokio::time::timeout(SHUTDOWN_GRACE, h.recorder.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not write the last history records")
                }
                Err(_) => tracing::error!("the last history records were not written in time"),
            }
        }
        Ok(())
    }
}

/// Lowers `max_http_connections` below the process's open-file limit (keeping 1 % of it, at
/// least 64, for the listener, the store and Redis), and `max_connections` (WebSockets) as
/// much again below that, so that a node full of WebSockets still answers its API and health
/// checks. At a cap a connection gets an HTTP 503 at once; past the file limit it could only
/// wait, unanswered, in the accept queue.
fn fit_connections_to_file_limit(limits: &mut LimitsConfig) {
    if let Ok(text) = std::fs::read_to_string("/proc/self/limits") {
        fit_connections(limits, &text);
    }
}

/// [`fit_connections_to_file_limit`] with the text of `/proc/self/limits`.
fn fit_connections(limits: &mut LimitsConfig, proc_limits: &str) {
    let Some(soft) = proc_limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
    else {
        return; // "unlimited", or not Linux
    };
    let reserve = (soft / 100).max(64);
    let usable = soft.saturating_sub(reserve).max(1);
    limits.max_http_connections = limits.max_http_connections.min(usable);
    let websockets = usable.saturating_sub(reserve).max(1);
    if limits.max_connections > websockets {
        tracing::info!(
            max_connections = websockets,
            open_file_limit = soft,
            "max_connections lowered to fit the open-file limit"
        );
        limits.max_connections = websockets;
    }
}

/// Binds nothing itself: runs a server on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    Server::bind(listener, config).await?.run(shutdown).await
}

/// The router: HTTP API, WebSocket, health and metrics.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config.limits.max_http_body_bytes;
    let (api, doc) = api::routes(state.clone());
    let doc: Arc<str> = api::openapi(&doc).into();
    let mut router = Router::new()
        .merge(api)
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = Arc::clone(&doc);
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.to_string(),
                    )
                }
            }),
        )
        .merge(web::routes())
        .route(bluecam_proto::WS_PATH, get(ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if state.config.metrics_bind.is_none() {
        router = router.route("/metrics", get(metrics_page));
    }
    router
        .route("/", get(web::index))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            body_limit,
            api::refuse_declared_oversize,
        ))
        // Merged after the API's body limit: the transport's requests carry frames.
        .merge(http::routes(&state))
        .layer(axum::middleware::map_response(api::json_errors))
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return api::ApiError::unavailable("shutting down").into_response();
    }
    // Each backing service on its own, so the answer names what is down (never why: the
    // errors, with their hosts, go to the log only).
    // (Rooms live in PostgreSQL with `--database`, in Redis on a cluster node without it.)
    let store = match (&state.config.database_url, &state.config.redis_url) {
        (Some(_), _) => "PostgreSQL",
        (None, Some(_)) => "Redis",
        (None, None) => "SQLite",
    };
    let (store_checked, broker_checked) = tokio::join!(state.store.check(), state.broker.check());
    let mut down = Vec::new();
    if let Err(e) = store_checked {
        tracing::warn!(error = %e, "not ready: the store does not answer");
        down.push(store);
    }
    if let Err(e) = broker_checked {
        tracing::warn!(error = %e, "not ready: Redis does not answer");
        if !down.contains(&"Redis") {
            down.push("Redis");
        }
    }
    if down.is_empty() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        api::ApiError::unavailable(format!("not ready: {} unavailable", down.join(" and ")))
            .into_response()
    }
}

async fn metrics_page(State(state): State<AppState>) -> Response {
    state.driver.stats();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> api::ApiError {
    api::ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> api::ApiError {
    api::ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::BadRequest,
        "method not allowed on this route",
    )
}

/// Session expiry (as the core asks) and the empty-room sweep, until shutdown.
/// How often the node notes that it is alive, for the history.
const ALIVE_EVERY: Duration = Duration::from_millis(500);
/// How often (in those notes) a cluster node looks for sessions of dead nodes.
const SWEEP_EVERY_TICKS: u64 = 10;

/// The first pruning of the history comes this long after the start (not during it), the next
/// ones a day apart.
const RETENTION_FIRST: Duration = Duration::from_secs(60);
const RETENTION_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Deletes the history older than `days`, daily, until shutdown (`history_retention_days`).
async fn retention(
    recorder: history::Recorder,
    days: std::num::NonZeroU32,
    shutdown: CancellationToken,
) {
    let keep_ms = u64::from(days.get()) * 24 * 3600 * 1000;
    let mut next = tokio::time::Instant::now() + RETENTION_FIRST;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = shutdown.cancelled() => return,
        }
        let before_ms = history::now_ms().saturating_sub(keep_ms);
        match recorder.prune(before_ms).await {
            Ok([participants, calls, events]) => tracing::info!(
                days = days.get(),
                participants,
                calls,
                events,
                "history pruned"
            ),
            Err(e) => tracing::warn!(error = %e, "could not prune the history; next try in a day"),
        }
        next += RETENTION_EVERY;
    }
}

/// The history's heartbeat (after a crash, open sessions end when the node was last alive)
/// and, with endpoints configured, the webhook delivery.
fn spawn_history(state: &AppState, history: History) {
    let s = state.clone();
    let recorder = history.recorder.clone();
    state.tracker.spawn(async move {
        let mut interval = tokio::time::interval(ALIVE_EVERY);
        let cluster = s.config.redis_url.is_some();
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    let now = history::now_ms();
                    recorder.record(history::Event::Alive { at_ms: now });
                    // A cluster's nodes end the sessions of dead nodes nobody took over.
                    ticks += 1;
                    if cluster && ticks.is_multiple_of(SWEEP_EVERY_TICKS) {
                        recorder.record(history::Event::Sweep { now_ms: now });
                    }
                }
                () = s.shutdown.cancelled() => return,
            }
        }
    });
    if let Some(days) = state.config.history_retention_days {
        state.tracker.spawn(retention(
            history.recorder.clone(),
            days,
            state.shutdown.clone(),
        ));
    }
    if !state.config.webhooks.is_empty() {
        let deliverer = webhooks::Deliverer {
            backend: history.backend,
            node: history.node.node,
            endpoints: state.config.webhooks.clone(),
            outbox: history.outbox,
            metrics: state.metrics.clone(),
            retry_for: Duration::from_secs(state.config.webhook_retry_secs),
        };
        state.tracker.spawn(deliverer.run(state.shutdown.clone()));
    }
}

fn spawn_timers(state: &AppState) {
    let s = state.clone();
    state.tracker.spawn(async move {
        loop {
            let (vacated, next) = s.driver.tick(Instant::now());
            s.touch_rooms(vacated).await;
            // Wake at the core's next deadline, and at least every second for the gauges.
            let wait = next
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = s.driver.rescheduled().notified() => {}
                () = s.shutdown.cancelled() => return,
            }
        }
    });
    // Every connection's ping and idle check, a sixteenth of the connections at a time, so
    // that each has its turn once per ping interval (`Driver::ping_round`).
    let s = state.clone();
    state.tracker.spawn(async move {
        const SLICES: u64 = 16;
        let mut round = tokio::time::interval(s.config.limits.ping_interval() / SLICES as u32);
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for slice in (0..SLICES).cycle() {
            tokio::select! {
                _ = round.tick() => s.driver.ping_round(slice, SLICES),
                () = s.shutdown.cancelled() => return,
            }
        }
    });
    let s = state.clone();
    state.tracker.spawn(async move {
        let every = Duration::from_millis(s.config.limits.empty_room_sweep_ms.max(10));
        let mut interval = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = interval.tick() => sweep_empty_rooms(&s).await,
                () = s.shutdown.cancelled() => return,
            }
        }
    });
}

/// Deletes rooms that have been empty longer than their `emptyTimeoutSecs`.
async fn sweep_empty_rooms(state: &AppState) {
    let expired = match state.store.expired_rooms(unix_now()).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "empty-room sweep failed");
            return;
        }
    };
    for id in expired {
        // In a cluster the store counted peers on every node already.
        if state.driver.peer_count(&id) > 0 {
            continue;
        }
        match state.store.delete_empty_room(id.clone()).await {
            Ok(true) => {
                state.driver.close_room(&id, RoomClosedReason::Expired);
                if let Some(h) = &state.history {
                    h.recorder.record(history::Event::RoomDeleted {
                        room: id.clone(),
                        reason: "expired",
                        at_ms: history::now_ms(),
                    });
                }
                tracing::info!(room = %id, "empty room expired");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not delete an expired room"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            20000                20000                files     \n";

    #[test]
    fn local_urls() {
        for url in [
            "http://localhost:8080",
            "https://127.0.0.1",
            "http://[::1]:9/x",
            "http://app.localhost",
        ] {
            assert!(is_local_url(url), "{url}");
        }
        for url in [
            "https://meet.example.com",
            "http://10.0.0.1:8080",
            "not a url",
            "/relative",
        ] {
            assert!(!is_local_url(url), "{url}");
        }
    }

    #[test]
    fn max_connections_fits_under_the_open_file_limit() {
        let mut limits = LimitsConfig::default();
        fit_connections(&mut limits, LIMITS);
        assert_eq!(limits.max_http_connections, 19_800);
        assert_eq!(limits.max_connections, 19_600, "room left for HTTP");
        let mut small = LimitsConfig {
            max_connections: 1_000,
            ..LimitsConfig::default()
        };
        fit_connections(&mut small, LIMITS);
        assert_eq!(small.max_connections, 1_000, "a lower setting is kept");
        let mut tiny = LimitsConfig::default();
        fit_connections(
            &mut tiny,
            &LIMITS.replace("20000                20000", "300 300"),
        );
        assert_eq!(
            tiny.max_http_connections, 236,
            "at least 64 kept for the rest"
        );
        assert_eq!(tiny.max_connections, 172, "and 64 more for HTTP");
        let mut unlimited = LimitsConfig::default();
        fit_connections(
            &mut unlimited,
            &LIMITS.replace("20000                20000", "unlimited unlimited"),
        );
        assert_eq!(unlimited.max_connections, 100_000);
        assert_eq!(unlimited.max_http_connections, 101_000);
    }
}
