//! Server configuration: defaults, the TOML file, and what the CLI layers on top.
//! Every limit (docs/configuration.md, "Limits and what happens when they are reached") lives here with its default.

use bluecam_proto::IceServer;
use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Everything `bluecam serve` can be told. Field names are the TOML keys.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Directory for the SQLite file and the generated API secret.
    pub data_dir: PathBuf,
    /// The URL clients use to reach this server (printed, and used in links).
    pub public_url: Option<String>,
    /// The API secret (bearer secret of the HTTP API and HS256 key of tokens). When unset,
    /// one is generated on first start and kept in `data_dir/api-secret` (mode 0600).
    pub api_secret: Option<String>,
    /// Serve HTTPS/WSS with this certificate chain and key (PEM files); browsers need a secure
    /// context for the camera anywhere but localhost.
    pub tls: Option<TlsConfig>,
    /// Origins allowed to open `/v1/ws` (`Origin` header). Empty: any origin.
    pub allowed_origins: Vec<String>,
    /// Reverse proxies (addresses or prefixes) trusted to name the client: a request from one
    /// is counted under the right-most address of `forwarded_header` that is not one of them.
    pub trusted_proxies: Vec<String>,
    /// The header the trusted proxies append the client to: `x-forwarded-for` or `forwarded`.
    pub forwarded_header: String,
    /// Every connection starts with a PROXY protocol header (v1 or v2) naming its client (an
    /// L4 load balancer in front); with `trusted_proxies`, only those may connect.
    pub proxy_protocol: bool,
    /// ICE servers handed to clients in `joined`.
    pub ice_servers: Vec<IceServer>,
    /// A TURN server sharing a secret with this node (coturn's `use-auth-secret`): each session
    /// gets its own short-lived credentials.
    pub turn: Option<TurnConfig>,
    /// Serve the demo page at `/` with its secret-less room and token endpoints. Unset: on
    /// when `bind` is a loopback address (the local default setup), off otherwise.
    pub demo: Option<bool>,
    /// Default lifetime of tokens minted through the API, in seconds.
    pub default_token_ttl_secs: u64,
    /// Largest `ttlSecs` the token endpoint accepts.
    pub max_token_ttl_secs: u64,
    pub limits: LimitsConfig,
    /// Run as a node of a cluster sharing rooms through this Redis (`redis://HOST:PORT`;
    /// `rediss://` for TLS, always verified).
    pub redis_url: Option<String>,
    /// PEM bundle of the certificate authorities trusted for a `rediss://` Redis (instead of
    /// the system's); set with a plain `redis://` URL, the node refuses to start.
    pub redis_ca: Option<PathBuf>,
    /// Cluster: the PostgreSQL (`postgres://USER@HOST:PORT/DB`) that keeps rooms, call history
    /// and the webhook outbox, shared by every node.
    pub database_url: Option<String>,
    /// Connections each node keeps to `database_url` at most.
    pub database_pool: usize,
    pub cluster: ClusterConfig,
    /// Serve `/metrics` on this address only (and not on `bind`). Unset: on `bind`.
    pub metrics_bind: Option<SocketAddr>,
    /// Answer STUN Binding requests (UDP) and hand clients `stun:HOST:PORT` for it.
    pub stun: bool,
    /// UDP address of the built-in STUN server. Unset: the address and port of `bind`.
    pub stun_bind: Option<SocketAddr>,
    /// Endpoints that get the room, peer and call events (docs/webhooks.md).
    pub webhooks: Vec<WebhookConfig>,
    /// How long an event is retried before it is given up (marked failed and counted).
    pub webhook_retry_secs: u64,
    /// Webhook events waiting at most; beyond, new events are dropped (counted and logged),
    /// never a join held up.
    pub webhook_outbox_max: usize,
    /// Days the history is kept: once a day, sessions and calls that ended longer ago, and
    /// webhook events that failed longer ago, are deleted. Unset: kept for ever.
    pub history_retention_days: Option<std::num::NonZeroU32>,
}

/// Settings of a cluster node (used with `redis_url`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// A node that has not renewed its liveness key for this long is dead: its peers leave
    /// their rooms (`peer_left`, reason `timeout`) unless they resumed on another node.
    pub node_ttl_secs: u64,
    /// Messages queued for other nodes at most; beyond, senders get `unavailable` errors.
    pub publish_queue: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_ttl_secs: 15,
            publish_queue: 65_536,
        }
    }
}

/// Certificate and key for built-in TLS (rustls).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// TURN with credentials minted per session (coturn `use-auth-secret` / `static-auth-secret`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TurnConfig {
    /// `turn:` / `turns:` URLs of the server.
    pub urls: Vec<String>,
    /// coturn's `static-auth-secret`.
    pub secret: String,
    /// Lifetime of the credentials, in seconds (default one day).
    #[serde(default = "default_turn_ttl")]
    pub ttl_secs: u64,
}

fn default_turn_ttl() -> u64 {
    24 * 3600
}

impl TurnConfig {
    /// The ICE server entry for one session: username `<expiry>:<peer>`, credential
    /// base64(HMAC-SHA1(secret, username)), as coturn checks it.
    pub fn ice_server(&self, peer: &str, now_unix: u64) -> IceServer {
        use base64::Engine as _;
        use hmac::Mac as _;
        let username = format!("{}:{peer}", now_unix + self.ttl_secs);
        // HMAC accepts keys of any length; this cannot fail.
        let credential = hmac::Hmac::<sha1::Sha1>::new_from_slice(self.secret.as_bytes())
            .map(|mut mac| {
                mac.update(username.as_bytes());
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            })
            .unwrap_or_default();
        IceServer {
            urls: self.urls.clone(),
            username: Some(username),
            credential: Some(credential),
        }
    }
}

/// The event types, in the order a room's life produces them.
pub const EVENT_TYPES: [&str; 6] = [
    "room.created",
    "peer.joined",
    "call.started",
    "peer.left",
    "call.ended",
    "room.deleted",
];

/// One endpoint (`[[webhooks]]` in the TOML file, or `BLUECAM_WEBHOOK_URL` and
/// `BLUECAM_WEBHOOK_SECRET`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed (http or https).
    pub url: String,
    /// The signing secret: `whsec_` and base64 of at least 24 random bytes.
    pub secret: String,
    /// The event types sent here; empty: all of them.
    #[serde(default)]
    pub events: Vec<String>,
}

impl WebhookConfig {
    /// The HMAC key: the secret's bytes after `whsec_`, base64-decoded.
    pub fn key(&self) -> Result<Vec<u8>, Invalid> {
        use base64::Engine as _;
        let url = redacted(&self.url);
        let encoded = self.secret.strip_prefix("whsec_").ok_or_else(|| {
            Invalid::new(format!(
                "webhook secret for {url} must start with whsec_ (Standard Webhooks)"
            ))
        })?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| Invalid::because(format!("webhook secret for {url} is not base64"), e))?;
        if key.len() < 24 {
            return Err(Invalid::new(format!(
                "webhook secret for {url} is too short: give at least 24 random bytes"
            )));
        }
        Ok(key)
    }

    /// Checks the URL, the secret and the event names.
    pub fn validate(&self) -> Result<(), Invalid> {
        let url: reqwest::Url = self.url.parse().map_err(|e| {
            Invalid::because(
                format!("webhook url {:?} is not a URL", redacted(&self.url)),
                e,
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Invalid::new(format!(
                "webhook url {:?} must be http or https",
                redacted(&self.url)
            )));
        }
        self.key()?;
        if let Some(bad) = self
            .events
            .iter()
            .find(|e| !EVENT_TYPES.contains(&e.as_str()))
        {
            return Err(Invalid::new(format!(
                "webhook event {bad:?} is not one of {}",
                EVENT_TYPES.join(", ")
            )));
        }
        Ok(())
    }
}

/// An endpoint as it may be shown (logs, errors, `last_error`): `scheme://host[:port]` and a
/// short hash of the whole URL (`https://hooks.example.com #1a2b3c4d`), which tells endpoints
/// of one host apart. Nothing else: the user name and password, the query, the fragment and
/// also the path may carry a credential (Slack's and Discord's webhook URLs have it in the
/// path). A URL that does not parse shows its hash alone.
pub fn redacted(url: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(url.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    match reqwest::Url::parse(url) {
        Ok(u) if u.host_str().is_some() => {
            let host = u.host_str().unwrap_or_default();
            match u.port() {
                Some(port) => format!("{}://{host}:{port} #{hash}", u.scheme()),
                None => format!("{}://{host} #{hash}", u.scheme()),
            }
        }
        _ => format!("(an endpoint) #{hash}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_credentials_follow_coturns_rest_scheme() {
        let turn = TurnConfig {
            urls: vec!["turn:turn.example.com:3478".into()],
            secret: "s3cret".into(),
            ttl_secs: 100,
        };
        let ice = turn.ice_server("peer-1", 1_699_999_900);
        assert_eq!(ice.username.as_deref(), Some("1700000000:peer-1"));
        // Computed independently: base64(HMAC-SHA1("s3cret", "1700000000:peer-1")).
        assert_eq!(
            ice.credential.as_deref(),
            Some("rCFVLvIwlVfR84C5QMSLI2HmoLo=")
        );
    }
}

/// Limits with their overflow policies (docs/configuration.md, "Limits and what happens when they are reached").
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest text frame accepted (1 MiB message + envelope). Up to twice this gets
    /// `too_large`; beyond, the socket closes with 1009.
    pub max_frame_bytes: usize,
    /// Bytes queued towards one connection before it is disconnected as a slow consumer.
    pub outbound_queue_bytes: usize,
    /// Frames queued towards one connection (a second bound beside the bytes).
    pub outbound_queue_frames: usize,
    /// A connection whose socket takes nothing for this long while frames wait for it (the
    /// kernel's buffers on both ends are full: the client stopped reading) is disconnected as
    /// a slow consumer, whatever the size of its queue.
    pub write_stall_ms: u64,
    pub rate_frames_per_sec: u32,
    pub rate_burst_frames: u32,
    pub rate_bytes_per_sec: u64,
    pub rate_burst_bytes: u64,
    /// Bad frames tolerated within `bad_frame_window_secs` before close 4029.
    pub max_bad_frames: usize,
    pub bad_frame_window_secs: u64,
    pub join_timeout_secs: u64,
    /// WebSocket ping interval; a connection silent for twice this is closed.
    pub ping_interval_secs: u64,
    /// Default and upper bound of a room's `maxPeers`.
    pub max_peers_per_room: u32,
    pub resume_window_secs: u64,
    /// STUN Binding requests answered per second per source address (built-in STUN).
    pub stun_rate_per_source: f64,
    /// Burst of STUN Binding requests answered per source address.
    pub stun_burst_per_source: f64,
    /// STUN Binding requests answered per second from every source together: what a flood
    /// from spoofed addresses can make this node reflect at most.
    pub stun_rate_total: f64,
    /// Burst of STUN Binding requests answered from every source together.
    pub stun_burst_total: f64,
    pub resume_buffer_frames: usize,
    pub resume_buffer_bytes: usize,
    /// Open WebSocket connections this node accepts; more get HTTP 503.
    pub max_connections: usize,
    /// Open TCP connections of any kind (HTTP and WebSocket); more get a 503 and are closed.
    pub max_http_connections: usize,
    /// Open TCP connections from one source address (IPv6: one /64); 0 for no cap. Sources in
    /// `per_source_exempt` are not counted.
    pub max_connections_per_source: usize,
    /// Addresses or prefixes (`"10.0.0.0/8"`, `"::1"`) exempt from the per-source cap: the
    /// reverse proxy in front of the server, and by default loopback.
    pub per_source_exempt: Vec<String>,
    /// A request's header must arrive within this; a keep-alive connection idle this long
    /// between requests, or a new one silent this long, is closed (so is a TLS handshake).
    pub http_header_timeout_secs: u64,
    /// An HTTP request's body must arrive within this; beyond, 408. A declared body larger
    /// than `max_http_body_bytes` is refused (413) before it is read.
    pub http_request_timeout_secs: u64,
    /// Largest HTTP API request body.
    pub max_http_body_bytes: usize,
    /// How often rooms with `emptyTimeoutSecs` are checked, in milliseconds.
    pub empty_room_sweep_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("bluecam-data"),
            public_url: None,
            tls: None,
            api_secret: None,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            forwarded_header: "x-forwarded-for".into(),
            proxy_protocol: false,
            ice_servers: Vec::new(),
            turn: None,
            demo: None,
            default_token_ttl_secs: 3600,
            max_token_ttl_secs: 7 * 24 * 3600,
            limits: LimitsConfig::default(),
            redis_url: None,
            redis_ca: None,
            database_url: None,
            database_pool: 16,
            cluster: ClusterConfig::default(),
            metrics_bind: None,
            stun: true,
            stun_bind: None,
            webhooks: Vec::new(),
            webhook_retry_secs: 24 * 3600,
            webhook_outbox_max: 100_000,
            history_retention_days: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: (1 << 20) + (16 << 10),
            outbound_queue_bytes: 4 << 20,
            outbound_queue_frames: 4096,
            write_stall_ms: 1000,
            rate_frames_per_sec: 200,
            rate_burst_frames: 400,
            rate_bytes_per_sec: 2 << 20,
            rate_burst_bytes: 4 << 20,
            max_bad_frames: 20,
            bad_frame_window_secs: 10,
            join_timeout_secs: 10,
            ping_interval_secs: 20,
            max_peers_per_room: 50,
            resume_window_secs: 60,
            stun_rate_per_source: 20.0,
            stun_burst_per_source: 100.0,
            stun_rate_total: 20_000.0,
            stun_burst_total: 20_000.0,
            resume_buffer_frames: 1024,
            resume_buffer_bytes: 4 << 20,
            max_connections: 100_000,
            max_http_connections: 101_000,
            max_connections_per_source: 1_000,
            per_source_exempt: vec!["127.0.0.0/8".into(), "::1".into()],
            http_header_timeout_secs: 10,
            http_request_timeout_secs: 30,
            max_http_body_bytes: 256 << 10,
            empty_room_sweep_ms: 5_000,
        }
    }
}

impl LimitsConfig {
    /// A connection's inbound rate limits (its `RateLimiter` keeps only its levels).
    pub fn rates(&self) -> bluecam_core::Rates {
        bluecam_core::Rates::new(
            self.rate_frames_per_sec,
            self.rate_burst_frames,
            self.rate_bytes_per_sec,
            self.rate_burst_bytes,
        )
    }

    pub fn join_timeout(&self) -> Duration {
        Duration::from_secs(self.join_timeout_secs)
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs.max(1))
    }

    /// See `http_header_timeout_secs`.
    pub fn http_header_timeout(&self) -> Duration {
        Duration::from_secs(self.http_header_timeout_secs.max(1))
    }

    /// See `http_request_timeout_secs`.
    pub fn http_request_timeout(&self) -> Duration {
        Duration::from_secs(self.http_request_timeout_secs.max(1))
    }

    /// How long a socket may take no bytes while frames wait for it.
    pub fn write_stall(&self) -> Duration {
        Duration::from_millis(self.write_stall_ms.max(1))
    }

    /// A connection from which nothing arrived for this long is closed.
    pub fn idle_timeout(&self) -> Duration {
        self.ping_interval() * 2
    }

    /// The cap above which a frame is not even read into memory.
    pub fn hard_frame_cap(&self) -> usize {
        self.max_frame_bytes.saturating_mul(2)
    }

    /// The limits as clients see them in `joined`.
    pub fn to_wire(&self, max_peers: u32) -> bluecam_proto::Limits {
        bluecam_proto::Limits {
            max_frame_bytes: self.max_frame_bytes,
            rate_frames_per_sec: self.rate_frames_per_sec,
            rate_burst_frames: self.rate_burst_frames,
            rate_bytes_per_sec: self.rate_bytes_per_sec,
            rate_burst_bytes: self.rate_burst_bytes,
            outbound_queue_bytes: self.outbound_queue_bytes,
            max_peers,
            resume_window_secs: self.resume_window_secs,
            ping_interval_secs: self.ping_interval_secs,
        }
    }

    /// Settings of the room core.
    pub fn core(&self) -> bluecam_core::CoreConfig {
        bluecam_core::CoreConfig {
            resume_window: Duration::from_secs(self.resume_window_secs),
            resume_buffer_frames: self.resume_buffer_frames,
            resume_buffer_bytes: self.resume_buffer_bytes,
        }
    }
}

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid {var}")]
    Env {
        var: String,
        #[source]
        source: Invalid,
    },
    #[error("invalid configuration (the file and the BLUECAM_* variables together): {0}")]
    Merged(Box<toml::de::Error>),
}

/// A setting whose value cannot be used: what is wrong with it, and the error underneath when
/// there is one (printed after it as its cause).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Invalid {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// `message`, caused by `source`.
    pub fn because(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// How a setting's environment variable is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Taken as it is (also addresses, paths and URLs).
    Str,
    /// A number or `true`/`false`, as in TOML.
    Scalar,
    /// A JSON array of strings, or the strings separated by commas.
    List,
    /// JSON (`ice_servers`: an array of `{"urls": [...], "username", "credential"}`).
    Json,
}

/// One setting: its TOML key (`table.key`), how its variable is read, and its flag if it has
/// one. Its variable is `BLUECAM_` and the key in capitals, dots as underscores.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub key: &'static str,
    pub kind: Kind,
    /// The `bluecam serve` flag. A setting with a flag has its variable read by the flag's
    /// parser (same name, same priority as the flag).
    pub flag: Option<&'static str>,
}

impl Setting {
    /// The environment variable: `limits.max_frame_bytes` is `BLUECAM_LIMITS_MAX_FRAME_BYTES`.
    pub fn var(&self) -> String {
        format!(
            "BLUECAM_{}",
            self.key.replace('.', "_").to_ascii_uppercase()
        )
    }
}

const fn setting(key: &'static str, kind: Kind, flag: Option<&'static str>) -> Setting {
    Setting { key, kind, flag }
}

/// Every setting of `bluecam serve` (docs/configuration.md has one row for each; a test checks
/// both that list and that this one names every field of [`Config`]).
pub const SETTINGS: &[Setting] = {
    use Kind::{Json, List, Scalar, Str};
    &[
        setting("bind", Str, Some("--bind")),
        setting("data_dir", Str, Some("--data-dir")),
        setting("public_url", Str, Some("--public-url")),
        setting("api_secret", Str, Some("--api-secret")),
        setting("tls.cert", Str, Some("--tls-cert")),
        setting("tls.key", Str, Some("--tls-key")),
        setting("allowed_origins", List, Some("--allowed-origin")),
        setting("trusted_proxies", List, None),
        setting("forwarded_header", Str, None),
        setting("proxy_protocol", Scalar, None),
        setting("demo", Scalar, Some("--demo")),
        setting("metrics_bind", Str, Some("--metrics-bind")),
        setting("redis_url", Str, Some("--redis")),
        setting("redis_ca", Str, Some("--redis-ca")),
        setting("database_url", Str, Some("--database")),
        setting("database_pool", Scalar, None),
        setting("stun", Scalar, None),
        setting("stun_bind", Str, Some("--stun-bind")),
        setting("ice_servers", Json, None),
        setting("webhooks", Json, None),
        setting("webhook_retry_secs", Scalar, None),
        setting("webhook_outbox_max", Scalar, None),
        setting(
            "history_retention_days",
            Scalar,
            Some("--history-retention-days"),
        ),
        setting("turn.urls", List, None),
        setting("turn.secret", Str, None),
        setting("turn.ttl_secs", Scalar, None),
        setting("default_token_ttl_secs", Scalar, None),
        setting("max_token_ttl_secs", Scalar, None),
        setting("cluster.node_ttl_secs", Scalar, None),
        setting("cluster.publish_queue", Scalar, None),
        setting("limits.max_frame_bytes", Scalar, None),
        setting("limits.outbound_queue_bytes", Scalar, None),
        setting("limits.outbound_queue_frames", Scalar, None),
        setting("limits.write_stall_ms", Scalar, None),
        setting("limits.rate_frames_per_sec", Scalar, None),
        setting("limits.rate_burst_frames", Scalar, None),
        setting("limits.rate_bytes_per_sec", Scalar, None),
        setting("limits.rate_burst_bytes", Scalar, None),
        setting("limits.max_bad_frames", Scalar, None),
        setting("limits.bad_frame_window_secs", Scalar, None),
        setting("limits.join_timeout_secs", Scalar, None),
        setting("limits.ping_interval_secs", Scalar, None),
        setting("limits.max_peers_per_room", Scalar, None),
        setting("limits.resume_window_secs", Scalar, None),
        setting("limits.stun_rate_per_source", Scalar, None),
        setting("limits.stun_burst_per_source", Scalar, None),
        setting("limits.stun_rate_total", Scalar, None),
        setting("limits.stun_burst_total", Scalar, None),
        setting("limits.resume_buffer_frames", Scalar, None),
        setting("limits.resume_buffer_bytes", Scalar, None),
        setting("limits.max_connections", Scalar, None),
        setting("limits.max_http_connections", Scalar, None),
        setting("limits.max_connections_per_source", Scalar, None),
        setting("limits.per_source_exempt", List, None),
        setting("limits.http_header_timeout_secs", Scalar, None),
        setting("limits.http_request_timeout_secs", Scalar, None),
        setting("limits.max_http_body_bytes", Scalar, None),
        setting("limits.empty_room_sweep_ms", Scalar, None),
    ]
};

impl Config {
    /// Reads a TOML file; keys not in it keep their defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        Self::load(Some(path), |_| None)
    }

    /// The defaults, then the TOML file (if any), then the environment (`env` looks a variable
    /// up) for every setting without a flag: the flags (and their variables) are the caller's.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_owned(),
                    source: Box::new(source),
                })?
            }
            None => toml::Table::new(),
        };
        let mut from_env = false;
        for s in SETTINGS.iter().filter(|s| s.flag.is_none()) {
            let var = s.var();
            let Some(raw) = env(&var).filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            let value =
                env_value(s.kind, raw.trim()).map_err(|source| ConfigError::Env { var, source })?;
            insert(&mut table, s.key, value);
            from_env = true;
        }
        // One endpoint from two variables, beside any in the file or in BLUECAM_WEBHOOKS.
        if let Some(url) = env("BLUECAM_WEBHOOK_URL").filter(|v| !v.trim().is_empty()) {
            let secret = env("BLUECAM_WEBHOOK_SECRET").unwrap_or_default();
            let mut endpoint = toml::Table::new();
            endpoint.insert("url".into(), toml::Value::String(url.trim().to_owned()));
            endpoint.insert(
                "secret".into(),
                toml::Value::String(secret.trim().to_owned()),
            );
            let list = table
                .entry("webhooks")
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            if let toml::Value::Array(list) = list {
                list.push(toml::Value::Table(endpoint));
            }
            from_env = true;
        }
        let parsed = Self::deserialize(toml::Value::Table(table));
        match (parsed, file) {
            (Ok(config), _) => Ok(config),
            (Err(source), Some(path)) if !from_env => Err(ConfigError::Parse {
                path: path.to_owned(),
                source: Box::new(source),
            }),
            (Err(source), _) => Err(ConfigError::Merged(Box::new(source))),
        }
    }
}

/// Reads one variable's text as the value its setting takes.
fn env_value(kind: Kind, raw: &str) -> Result<toml::Value, Invalid> {
    let json = |raw: &str| -> Result<toml::Value, Invalid> {
        let v: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| Invalid::because("not JSON", e))?;
        toml::Value::try_from(v).map_err(|e| Invalid::because("not a setting's value", e))
    };
    match kind {
        Kind::Str => Ok(toml::Value::String(raw.to_owned())),
        Kind::Scalar => toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| {
                matches!(
                    v,
                    toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)
                )
            })
            .ok_or_else(|| Invalid::new(format!("expected a number or true/false, got {raw:?}"))),
        Kind::List if raw.starts_with('[') => json(raw),
        Kind::List => Ok(toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        )),
        Kind::Json => json(raw),
    }
}

/// Sets `a.b` in a TOML table, making the intermediate table if needed.
fn insert(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                insert(t, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod env_tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(None, |k| vars.get(k).cloned())
    }

    /// The leaf keys of a serialized config, `table.key`.
    fn leaves(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&key, v, out);
                }
            }
            _ => {
                out.insert(prefix.to_owned());
            }
        }
    }

    #[test]
    fn every_field_is_a_setting_and_every_setting_a_field() {
        let mut config = Config {
            public_url: Some("u".into()),
            api_secret: Some("s".into()),
            tls: Some(TlsConfig {
                cert: "c".into(),
                key: "k".into(),
            }),
            turn: Some(TurnConfig {
                urls: vec![],
                secret: "s".into(),
                ttl_secs: 1,
            }),
            demo: Some(true),
            redis_url: Some("r".into()),
            redis_ca: Some("ca".into()),
            database_url: Some("d".into()),
            metrics_bind: Some(SocketAddr::from(([127, 0, 0, 1], 1))),
            stun_bind: Some(SocketAddr::from(([127, 0, 0, 1], 1))),
            history_retention_days: std::num::NonZeroU32::new(30),
            ..Config::default()
        };
        config.ice_servers = vec![];
        let mut fields = BTreeSet::new();
        leaves("", &toml::Value::try_from(&config).unwrap(), &mut fields);
        let listed: BTreeSet<String> = SETTINGS.iter().map(|s| s.key.to_owned()).collect();
        assert_eq!(fields, listed, "SETTINGS and the fields of Config differ");
    }

    #[test]
    fn the_configuration_page_lists_every_setting() {
        let page = include_str!("../../../docs/configuration.md");
        for s in SETTINGS {
            let row = page
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", s.key)))
                .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{}`", s.key));
            assert!(
                row.contains(&format!("`{}`", s.var())),
                "row of `{}` lacks {}",
                s.key,
                s.var()
            );
            if let Some(flag) = s.flag {
                assert!(
                    row.contains(&format!("`{flag}")),
                    "row of `{}` lacks {flag}",
                    s.key
                );
            }
        }
    }

    #[test]
    fn variables_set_what_the_file_would() {
        let c = load(&[
            ("BLUECAM_LIMITS_MAX_FRAME_BYTES", "2048"),
            ("BLUECAM_LIMITS_STUN_RATE_PER_SOURCE", "2.5"),
            ("BLUECAM_CLUSTER_NODE_TTL_SECS", "4"),
            ("BLUECAM_STUN", "false"),
            (
                "BLUECAM_ICE_SERVERS",
                r#"[{"urls":["turn:t.example:3478"],"username":"u","credential":"c"}]"#,
            ),
            (
                "BLUECAM_TURN_URLS",
                "turn:a.example:3478, turns:a.example:5349",
            ),
            ("BLUECAM_TURN_SECRET", "shh"),
            ("BLUECAM_LIMITS_PER_SOURCE_EXEMPT", r#"["10.0.0.0/8"]"#),
        ])
        .unwrap();
        assert_eq!(c.limits.max_frame_bytes, 2048);
        assert!((c.limits.stun_rate_per_source - 2.5).abs() < f64::EPSILON);
        assert_eq!(c.cluster.node_ttl_secs, 4);
        assert!(!c.stun);
        assert_eq!(c.ice_servers[0].urls, ["turn:t.example:3478"]);
        assert_eq!(c.ice_servers[0].credential.as_deref(), Some("c"));
        let turn = c.turn.unwrap();
        assert_eq!(turn.urls, ["turn:a.example:3478", "turns:a.example:5349"]);
        assert_eq!(turn.secret, "shh");
        assert_eq!(turn.ttl_secs, default_turn_ttl());
        assert_eq!(c.limits.per_source_exempt, ["10.0.0.0/8"]);
        // Untouched keys keep their defaults.
        assert_eq!(
            c.limits.rate_frames_per_sec,
            LimitsConfig::default().rate_frames_per_sec
        );
    }

    #[test]
    fn one_webhook_endpoint_from_two_variables() {
        let c = load(&[
            ("BLUECAM_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
            (
                "BLUECAM_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
            ("BLUECAM_WEBHOOK_RETRY_SECS", "60"),
        ])
        .unwrap();
        assert_eq!(c.webhooks.len(), 1);
        assert_eq!(c.webhooks[0].url, "http://127.0.0.1:9/hook");
        assert!(c.webhooks[0].events.is_empty());
        c.webhooks[0].validate().unwrap();
        assert_eq!(c.webhook_retry_secs, 60);
        let c = load(&[(
            "BLUECAM_WEBHOOKS",
            r#"[{"url":"https://a.example/h","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","events":["call.ended"]}]"#,
        )])
        .unwrap();
        assert_eq!(c.webhooks[0].events, ["call.ended"]);
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let dir = std::env::temp_dir().join(format!("bluecam-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[limits]\nmax_peers_per_room = 3\nresume_window_secs = 7\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), |k| {
            (k == "BLUECAM_LIMITS_MAX_PEERS_PER_ROOM").then(|| "9".to_owned())
        })
        .unwrap();
        assert_eq!(c.limits.max_peers_per_room, 9);
        assert_eq!(c.limits.resume_window_secs, 7);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_bad_variable_is_named_in_the_error() {
        let e = load(&[("BLUECAM_LIMITS_MAX_FRAME_BYTES", "lots")]).unwrap_err();
        assert!(
            e.to_string().contains("BLUECAM_LIMITS_MAX_FRAME_BYTES"),
            "{e}"
        );
        let e = load(&[("BLUECAM_ICE_SERVERS", "stun:x")]).unwrap_err();
        assert!(e.to_string().contains("BLUECAM_ICE_SERVERS"), "{e}");
        // A TURN secret without urls is incomplete: the error names the missing key.
        let e = load(&[("BLUECAM_TURN_SECRET", "s")]).unwrap_err();
        assert!(e.to_string().contains("urls"), "{e}");
        // Variables of other programs (and of no setting) are not read.
        load(&[("BLUECAM_BIN", "/x"), ("BLUECAM_LIMITS", "1")]).unwrap();
    }
}
