//! `bluecam`: the one binary users deploy. `serve` runs a node; `room` and `token` manage
//! rooms and mint tokens for an app's backend or a shell; `join` takes part in a room. (The load generator is its own
//! binary, `bluecam-bench`, so nothing of it ships here.)

/// The allocator (BENCHMARKS.md, "The allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli_join;
mod cli_room;
mod logs;

use anyhow::Context as _;
use bluecam_server::{Config, SecretOrigin, Server};
use clap::{Parser, Subcommand};
use std::{net::SocketAddr, path::PathBuf};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "bluecam",
    version,
    about = "Private real-time rooms for web apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a BlueCam node (HTTP API, WebSocket signaling and relay).
    Serve(ServeArgs),
    /// Create, list, show and delete rooms through the HTTP API.
    Room(cli_room::RoomArgs),
    /// List a room's calls (who was in each, and for how long), newest first, as JSON.
    Calls(cli_room::CallsArgs),
    /// Report call usage in an interval (calls, call and participant seconds), as JSON.
    Usage(cli_room::UsageArgs),
    /// Mint a room token offline with the API secret; prints the token alone (or, with
    /// --print-key, the token signing key derived from the secret).
    Token(cli_room::TokenArgs),
    /// Join a room as a native peer: events out on stdout and messages in on stdin, one JSON
    /// object per line (docs/native-client.md).
    Join(cli_join::JoinArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML file with any of the settings (flags and environment win over it).
    #[arg(long, env = "BLUECAM_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "BLUECAM_BIND")]
    bind: Option<SocketAddr>,
    /// Directory for the room database and the generated API secret [default: ./bluecam-data].
    #[arg(long, env = "BLUECAM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// URL clients reach this node at (printed, used in links).
    #[arg(long, env = "BLUECAM_PUBLIC_URL")]
    public_url: Option<String>,
    /// API secret; when unset one is generated on first start and kept in the data dir.
    #[arg(long, env = "BLUECAM_API_SECRET", hide_env_values = true)]
    api_secret: Option<String>,
    /// Serve HTTPS/WSS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "BLUECAM_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "BLUECAM_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Run as a node of a cluster sharing rooms through this Redis (`redis://HOST:PORT`);
    /// every node needs the same --api-secret.
    #[arg(long, env = "BLUECAM_REDIS_URL")]
    redis: Option<String>,
    /// PEM bundle of the certificate authorities trusted for a `rediss://` Redis (default:
    /// the system's).
    #[arg(long, env = "BLUECAM_REDIS_CA")]
    redis_ca: Option<PathBuf>,
    /// Cluster: the PostgreSQL that keeps rooms, call history and webhooks
    /// (`postgres://USER@HOST:PORT/DB`), shared by every node.
    #[arg(
        long = "database",
        env = "BLUECAM_DATABASE_URL",
        hide_env_values = true
    )]
    database: Option<String>,
    /// Origins allowed to open WebSockets (repeatable, or comma-separated in the env var).
    #[arg(
        long = "allowed-origin",
        env = "BLUECAM_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Serve the demo page at `/` and its secret-less room and token endpoints even on a
    /// non-loopback bind (by default it is on only on a loopback bind whose --public-url, if
    /// any, is local too).
    /// `--demo=false` (or `BLUECAM_DEMO=false`) turns it off, as `--no-demo` does.
    #[arg(
        long,
        env = "BLUECAM_DEMO",
        conflicts_with = "no_demo",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    demo: Option<bool>,
    /// Do not serve the demo.
    #[arg(long, env = "BLUECAM_NO_DEMO")]
    no_demo: bool,
    /// Serve `/metrics` on this address only, not on the public one (e.g. 127.0.0.1:9090).
    #[arg(long, env = "BLUECAM_METRICS_BIND")]
    metrics_bind: Option<SocketAddr>,
    /// UDP address of the built-in STUN server [default: the address and port of --bind].
    #[arg(long, env = "BLUECAM_STUN_BIND", conflicts_with = "no_stun")]
    stun_bind: Option<SocketAddr>,
    /// Do not answer STUN (and do not hand clients the built-in STUN server).
    #[arg(long, env = "BLUECAM_NO_STUN")]
    no_stun: bool,
    /// Keep the call history (sessions, calls, failed webhook events) this many days; pruned
    /// daily [default: kept for ever].
    #[arg(long, env = "BLUECAM_HISTORY_RETENTION_DAYS")]
    history_retention_days: Option<std::num::NonZeroU32>,
    /// How the log on stderr is written: `text` (coloured only on a terminal, never with
    /// NO_COLOR) or `json` (one object per line).
    #[arg(long, env = "BLUECAM_LOG_FORMAT", value_enum, default_value_t = logs::LogFormat::Text)]
    log_format: logs::LogFormat,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        // The file, then the variables of the settings without a flag; clap read the flags'.
        let mut config = Config::load(self.config.as_deref(), |var| std::env::var(var).ok())?;
        if let Some(redis) = self.redis.filter(|r| !r.is_empty()) {
            config.redis_url = Some(redis);
        }
        if self.redis_ca.is_some() {
            config.redis_ca = self.redis_ca;
        }
        if let Some(db) = self.database.filter(|d| !d.is_empty()) {
            config.database_url = Some(db);
        }
        if let Some(bind) = self.bind {
            config.bind = bind;
        }
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        if let (Some(cert), Some(key)) = (self.tls_cert, self.tls_key) {
            config.tls = Some(bluecam_server::config::TlsConfig { cert, key });
        }
        if self.public_url.is_some() {
            config.public_url = self.public_url;
        }
        if self.api_secret.is_some() {
            config.api_secret = self.api_secret;
        }
        if !self.allowed_origins.is_empty() {
            config.allowed_origins = self.allowed_origins;
        }
        if self.demo.is_some() {
            config.demo = self.demo;
        }
        if self.no_demo {
            config.demo = Some(false);
        }
        if self.metrics_bind.is_some() {
            config.metrics_bind = self.metrics_bind;
        }
        if self.stun_bind.is_some() {
            config.stun_bind = self.stun_bind;
        }
        if self.no_stun {
            config.stun = false;
        }
        if self.history_retention_days.is_some() {
            config.history_retention_days = self.history_retention_days;
        }
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Room(args) => cli_room::room(args).await,
        Command::Calls(args) => cli_room::calls(args).await,
        Command::Usage(args) => cli_room::usage(args).await,
        Command::Token(args) => cli_room::token(args),
        Command::Join(args) => cli_join::join(args).await,
    }
}

/// Prints a startup line; a closed stdout (`bluecam serve | head -1`) must not stop the server.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let _log = logs::init(args.log_format);
    // (Listening for the signals before anything is printed: whoever reads the startup lines
    // may send one at once.)
    let signalled = signals();
    let config = args.into_config()?;
    let listener =
        listen(config.bind).with_context(|| format!("cannot listen on {}", config.bind))?;
    let public_url = config.public_url.clone();
    let data_dir = config.data_dir.clone();
    let tls = config.tls.is_some();
    let server = Server::bind(listener, config).await?;
    let addr = server.local_addr()?;
    let scheme = if tls { "https" } else { "http" };
    let url = public_url.unwrap_or_else(|| format!("{scheme}://{addr}"));
    say!("BlueCam is listening on {url}");
    match server.secret_origin() {
        SecretOrigin::Generated => say!(
            "Generated an API secret (kept in {}):\n  BLUECAM_API_SECRET={}",
            data_dir.join("api-secret").display(),
            server.secret().expose()
        ),
        SecretOrigin::Loaded => say!(
            "API secret: read from {}",
            data_dir.join("api-secret").display()
        ),
        SecretOrigin::Configured => say!("API secret: from the configuration"),
    }
    if server.demo_for_anyone() {
        say!(
            "WARNING: the demo is on for ANYONE who can reach {url}/: they can make demo rooms \
             and join them without the API secret (--no-demo turns it off)"
        );
        tracing::warn!("the demo is on for anyone who can reach this server (--demo)");
    } else if let Some(key) = server.demo_key() {
        say!(
            "Demo: open {url}/?demo={key} in this machine's browser (only a browser that \
             opened this link is served; --demo serves anyone, --no-demo turns it off)"
        );
    } else {
        say!("Demo: off");
    }
    match server.metrics_addr() {
        Some(addr) => say!("Metrics: http://{addr}/metrics"),
        None => say!("Metrics: {url}/metrics"),
    }
    if let Some(node) = server.node() {
        say!("Cluster node {node}, sharing rooms through Redis");
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        signalled.await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    server.run(shutdown).await?;
    Ok(())
}

/// Binds with a deep accept backlog (the kernel caps it at `net.core.somaxconn`), so a join
/// storm waits in the queue instead of having its SYNs dropped and retried a second later.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

const LISTEN_BACKLOG: u32 = 4096;

/// SIGINT or SIGTERM, listened for from this call on (not from the first poll).
fn signals() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
