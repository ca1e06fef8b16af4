//! The HTTP front: accepts TCP connections and serves each with hyper-util's connection
//! builder, under limits that keep strangers from holding the server (docs/configuration.md,
//! "Security"):
//!
//! - HTTP/1.1 only (also over TLS, whose ALPN offers nothing else);
//! - a header-read timeout, which in hyper also bounds how long a keep-alive connection may
//!   sit idle between requests and how long a new connection may stay silent;
//! - the same bound on the TLS handshake;
//! - a cap on open TCP connections (WebSockets included) and one per source address (per /64
//!   for IPv6), both counted until the connection, or the WebSocket it became, closes.
//!
//! A connection over a cap is answered `503` with the JSON error body and closed (on a TLS
//! port, just closed). Behind a trusted proxy the client is the one it names (`proxied.rs`):
//! the proxy's connection counts in the total only, and each request, or the WebSocket it
//! becomes, counts under its client's address.

use crate::{AppState, config::LimitsConfig};
use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::Service as _;

/// Open TCP connections, overall and per source address.
#[derive(Debug)]
pub struct Gate {
    max_total: usize,
    /// 0: no per-address cap.
    max_per_source: usize,
    exempt: Vec<Prefix>,
    /// Who may name the client (`trusted_proxies`, the PROXY protocol).
    pub proxies: super::proxied::Proxies,
    total: AtomicUsize,
    by_source: Mutex<HashMap<IpAddr, usize>>,
    /// `bluecam_http_connections`, kept at `total`.
    gauge: metrics::Gauge,
}

/// One admitted connection; gives its place back when dropped. A WebSocket keeps the permit of
/// the connection it was upgraded from (it is in the request's extensions).
#[derive(Debug)]
pub struct ConnPermit {
    gate: Arc<Gate>,
    /// Whether it is counted under its source (`Gate::source_key` of `ip`): not when exempt.
    /// (A flag rather than the key: every connection holds one of these.)
    counted: bool,
    /// The client's address.
    pub ip: IpAddr,
    /// The permit of the connection it came through, when this one counts a client behind a
    /// proxy (the connection, counted in the total, lives as long as this does).
    via: Option<Arc<ConnPermit>>,
}

impl ConnPermit {
    /// The source its connection is counted under (an IPv4 address or an IPv6 /64); `None`
    /// for an exempt one (a same-host proxy carries everyone's requests).
    pub fn source(&self) -> Option<IpAddr> {
        self.counted.then(|| Gate::source_key(self.ip))
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerSource,
}

impl Refusal {
    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Self::Total => "too many connections on this node",
            Self::PerSource => "too many connections from this address",
        }
    }

    /// Counts it in `bluecam_http_refused_total{cap}`.
    pub fn count(self, metrics: &crate::metrics::Metrics) {
        match self {
            Self::Total => metrics.http_refused_total.increment(1),
            Self::PerSource => metrics.http_refused_source.increment(1),
        }
    }
}

impl Gate {
    /// Fails on an entry of `per_source_exempt` that is not an address or prefix.
    pub fn new(
        limits: &LimitsConfig,
        proxies: super::proxied::Proxies,
        gauge: metrics::Gauge,
    ) -> Result<Self, crate::config::Invalid> {
        Ok(Self {
            proxies,
            max_total: limits.max_http_connections,
            max_per_source: limits.max_connections_per_source,
            exempt: limits
                .per_source_exempt
                .iter()
                .map(|p| Prefix::parse(p))
                .collect::<Result<_, _>>()?,
            total: AtomicUsize::new(0),
            by_source: Mutex::new(HashMap::new()),
            gauge,
        })
    }

    /// The address a source is counted under: the address itself, or its /64 for IPv6 (one
    /// host usually holds a whole /64).
    fn source_key(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
            v4 => v4,
        }
    }

    /// Admits a connection from `ip`, or says which cap it hit. A trusted proxy's connection
    /// (or, with the PROXY protocol, any connection before its header is read) counts in the
    /// total only: its clients are counted by [`Gate::admit_client`].
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refusal> {
        let for_others = self.proxies.proxy_protocol || self.proxies.trusts(ip);
        self.admit_counted(ip, !for_others)
    }

    /// Admits something that is one client's own, as a connection of `ip` (an HTTP transport
    /// session: `ip` is the client a request came from, behind a proxy the one it named).
    pub fn admit_own(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refusal> {
        self.admit_counted(ip, true)
    }

    fn admit_counted(
        self: &Arc<Self>,
        ip: IpAddr,
        per_source: bool,
    ) -> Result<ConnPermit, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        let counted = if !per_source {
            false
        } else {
            match self.count_source(ip) {
                Ok(counted) => counted,
                Err(why) => {
                    self.total.fetch_sub(1, Ordering::AcqRel);
                    return Err(why);
                }
            }
        };
        self.gauge.set(self.open() as f64);
        Ok(ConnPermit {
            gate: self.clone(),
            counted,
            ip,
            via: None,
        })
    }

    /// Counts `client`, behind the proxy whose connection holds `via`, under its own
    /// address, for as long as the permit lives (a request, or the WebSocket it becomes; with
    /// the PROXY protocol, the connection).
    pub fn admit_client(
        self: &Arc<Self>,
        client: IpAddr,
        via: &Arc<ConnPermit>,
    ) -> Result<ConnPermit, Refusal> {
        Ok(ConnPermit {
            gate: self.clone(),
            counted: self.count_source(client)?,
            ip: client,
            via: Some(Arc::clone(via)),
        })
    }

    /// Takes a place of `ip`'s source; false when it is not counted (exempt, or no cap).
    fn count_source(&self, ip: IpAddr) -> Result<bool, Refusal> {
        let canonical = ip.to_canonical();
        if self.max_per_source == 0 || self.exempt.iter().any(|p| p.contains(canonical)) {
            return Ok(false);
        }
        let key = Self::source_key(canonical);
        let mut map = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Refusal::PerSource);
        }
        *n += 1;
        Ok(true)
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// An address prefix such as `10.0.0.0/8` or `::1` (a whole address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    net: IpAddr,
    len: u32,
}

impl Prefix {
    pub fn parse(text: &str) -> Result<Self, crate::config::Invalid> {
        let bad = || {
            crate::config::Invalid::new(format!(
                "{text:?} is not an IP address or prefix (such as 10.0.0.0/8)"
            ))
        };
        let (addr, len) = match text.trim().split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u32>().map_err(|_| bad())?)),
            None => (text.trim(), None),
        };
        let net = addr.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        Ok(Self { net, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.len).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.len).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        if let Some(key) = self.source() {
            let mut map = self
                .gate
                .by_source
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        // (A client behind a proxy: its connection counts in the total.)
        if self.via.is_none() {
            self.gate.total.fetch_sub(1, Ordering::AcqRel);
            self.gate.gauge.set(self.gate.open() as f64);
        }
    }
}

/// Refusals answered politely (a 503 and a short drain) at once; beyond, refused connections
/// are just closed, so a flood cannot hold descriptors through its refusals.
const MAX_POLITE_REFUSALS: usize = 64;
/// `TCP_NOTSENT_LOWAT` of accepted connections (see the accept loop).
#[cfg(target_os = "linux")]
const NOTSENT_LOWAT: u32 = 128 << 10;

/// How long a closing connection keeps reading (and discarding) what the client still sends.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// Closes lingering: shuts the write side down, then reads and discards what the client still
/// sends until it closes its side or [`LINGER`] passes. Dropping a socket with unread data
/// makes the kernel answer with a reset, which can destroy the last answer in flight.
pub(crate) async fn linger<I: AsyncRead + AsyncWrite + Unpin>(io: &mut I) {
    let drain = async {
        let _ = io.shutdown().await;
        let mut sink = vec![0u8; 4096];
        while let Ok(n) = io.read(&mut sink).await
            && n > 0
        {}
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// How the server's connections are served.
pub(crate) struct Front {
    pub listener: TcpListener,
    pub tls: Option<axum_server::tls_rustls::RustlsConfig>,
    pub router: Router,
    pub state: AppState,
    /// Whether `router` serves the WebSocket endpoint, so that a plain handshake may be
    /// answered before hyper (`ws::serve_direct`); not on the metrics port.
    pub websockets: bool,
}

impl Front {
    /// Accepts until `stop` is cancelled, then stops accepting and lets open HTTP connections
    /// finish (up to `grace`). Upgraded WebSockets are not waited for here.
    pub async fn run(self, stop: CancellationToken, grace: Duration) {
        let Front {
            listener,
            tls,
            router,
            state,
            websockets,
        } = self;
        #[cfg(target_os = "linux")]
        tune_listener(&listener);
        let limits = &state.config.limits;
        let header_timeout = limits.http_header_timeout();
        // HTTP/1.1 only (TLS offers nothing else, see `Server::bind`): no sniffing of the
        // protocol, which would wait for the first bytes with no timeout, and no HTTP/2, whose
        // server has no header or idle timeout.
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(64 << 10);
        let h1 = Arc::new(h1);
        let tls = tls.map(|config| {
            axum_server::tls_rustls::RustlsAcceptor::new(config).handshake_timeout(header_timeout)
        });
        let conns = TaskTracker::new();
        let polite = Arc::new(Semaphore::new(MAX_POLITE_REFUSALS));
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stop.cancelled() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors or memory: retry in a second rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = stop.cancelled() => break,
                    }
                }
            };
            // (Set on the listener where accepted sockets inherit it, below: Linux.)
            #[cfg(not(target_os = "linux"))]
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let permit = match state.gate.admit(peer.ip()) {
                Ok(permit) => permit,
                Err(why) => {
                    why.count(&state.metrics);
                    // On a TLS port a plain-text answer would only be a handshake error to
                    // the client: just close.
                    if tls.is_none()
                        && let Ok(place) = Arc::clone(&polite).try_acquire_owned()
                    {
                        tokio::spawn(async move {
                            refuse(tcp, why).await;
                            drop(place);
                        });
                    }
                    continue;
                }
            };
            let mut service = ConnService {
                router: router.clone(),
                peer,
                permit: Arc::new(permit),
                behind_proxy: false,
                metrics: state.metrics.clone(),
            };
            let h1 = h1.clone();
            let tls = tls.clone();
            let stop = stop.clone();
            let state = state.clone();
            conns.spawn(async move {
                use axum_server::accept::Accept as _;
                let mut tcp = tcp;
                if state.gate.proxies.proxy_protocol {
                    match proxy_protocol_client(&state, &mut tcp, &service, header_timeout).await {
                        Some(permit) => service.permit = permit,
                        None => return,
                    }
                }
                // From a trusted proxy, each request names its client: hyper reads them.
                service.behind_proxy = state.gate.proxies.trusts(service.permit.ip);
                match tls {
                    // A WebSocket handshake straight from the socket; anything else, hyper.
                    None if websockets && !service.behind_proxy => {
                        let direct = crate::transport::ws::serve_direct(
                            &state,
                            tcp,
                            &service.permit,
                            header_timeout,
                            &stop,
                        );
                        if let Some(tcp) = direct.await {
                            serve_http1(&h1, tcp, service, &stop).await;
                        }
                    }
                    None => serve_http1(&h1, tcp, service, &stop).await,
                    Some(acceptor) => match acceptor.accept(tcp, ()).await {
                        Ok((io, _)) => serve_http1(&h1, io, service, &stop).await,
                        Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                    },
                }
            });
        }
        drop(listener);
        conns.close();
        if tokio::time::timeout(grace, conns.wait()).await.is_err() {
            tracing::warn!("some HTTP connections did not finish within the grace period");
        }
    }
}

/// Reads a connection's PROXY protocol header and counts the client it names (the TCP peer for
/// a header without one); `None` when the connection is refused (closed): no valid header in
/// time, a peer that is not a trusted proxy (when `trusted_proxies` is set), or a client over
/// its source's cap.
async fn proxy_protocol_client(
    state: &AppState,
    tcp: &mut TcpStream,
    service: &ConnService,
    wait: Duration,
) -> Option<Arc<ConnPermit>> {
    let proxies = &state.gate.proxies;
    if proxies.has_trusted() && !proxies.trusts(service.peer.ip()) {
        tracing::debug!("a PROXY protocol connection from a peer not in trusted_proxies: closed");
        return None;
    }
    let client = match super::proxied::read_proxy_header(tcp, wait).await {
        Ok(client) => client.unwrap_or(service.peer.ip()),
        Err(e) => {
            tracing::debug!(error = %e, "connection refused");
            return None;
        }
    };
    match state.gate.admit_client(client, &service.permit) {
        Ok(permit) => Some(Arc::new(permit)),
        Err(why) => {
            why.count(&state.metrics);
            None
        }
    }
}

/// Signaling is small frames that must go out at once: no Nagle delay (with delayed ACKs it
/// costs 40 ms per exchange). And the kernel wakes a blocked writer once its unsent bytes fall
/// below [`NOTSENT_LOWAT`], rather than once a third of a send buffer of up to several MB has
/// drained: a slow reader that keeps reading shows steady progress, which the write-stall rule
/// looks at (and a slow connection holds less in kernel memory). Linux copies both from the
/// listening socket to every socket it accepts: set once here, not twice per connection.
#[cfg(target_os = "linux")]
fn tune_listener(listener: &TcpListener) {
    let sock = socket2::SockRef::from(listener);
    if let Err(e) = sock.set_tcp_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY on the listener");
    }
    if let Err(e) = sock.set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        tracing::debug!(error = %e, "cannot set TCP_NOTSENT_LOWAT");
    }
}

/// Serves one connection until it ends; on `stop`, lets the request in progress finish and
/// then closes (an upgraded WebSocket is on its own by then).
async fn serve_http1<I>(h1: &http1::Builder, io: I, service: ConnService, stop: &CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| service.call(req));
    let conn = h1
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// The router of one connection: every request carries the client's address and the
/// connection's permit.
#[derive(Clone)]
struct ConnService {
    router: Router,
    peer: SocketAddr,
    permit: Arc<ConnPermit>,
    /// The connection comes from a trusted proxy: each request is counted under the client
    /// it names.
    behind_proxy: bool,
    metrics: crate::metrics::Metrics,
}

impl ConnService {
    fn call(
        &self,
        mut req: hyper::Request<Incoming>,
    ) -> futures_util::future::Either<
        axum::routing::future::RouteFuture<std::convert::Infallible>,
        std::future::Ready<Result<axum::response::Response, std::convert::Infallible>>,
    > {
        use axum::response::IntoResponse as _;
        use futures_util::future::Either;
        let permit = if self.behind_proxy {
            let gate = &self.permit.gate;
            let client = gate.proxies.client(self.permit.ip, req.headers());
            match gate.admit_client(client, &self.permit) {
                Ok(permit) => Arc::new(permit),
                Err(why) => {
                    why.count(&self.metrics);
                    let mut res = crate::api::ApiError::unavailable(why.message()).into_response();
                    res.headers_mut()
                        .insert("retry-after", axum::http::HeaderValue::from_static("1"));
                    return Either::Right(std::future::ready(Ok(res)));
                }
            }
        } else {
            self.permit.clone()
        };
        req.extensions_mut().insert(ConnectInfo(self.peer));
        req.extensions_mut().insert(permit);
        Either::Left(self.router.clone().call(req))
    }
}

/// Errors of one connection, not of the listener: accept again at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset | K::Interrupted
    )
}

/// Answers a connection over a cap with `503` and the JSON error body, then closes it after a
/// short drain (so the kernel does not reset it over an unread request and lose the answer).
async fn refuse(mut tcp: TcpStream, why: Refusal) {
    let message = why.message();
    let body = format!(r#"{{"error":{{"code":"unavailable","message":"{message}"}}}}"#);
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let answer = async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body.as_bytes()).await
    };
    if let Ok(Ok(())) = tokio::time::timeout(LINGER, answer).await {
        linger(&mut tcp).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: usize, per_source: usize, exempt: &[&str]) -> Arc<Gate> {
        let limits = LimitsConfig {
            max_http_connections: total,
            max_connections_per_source: per_source,
            per_source_exempt: exempt.iter().map(|s| s.to_string()).collect(),
            ..LimitsConfig::default()
        };
        Arc::new(
            Gate::new(
                &limits,
                super::super::proxied::Proxies::none(),
                metrics::Gauge::noop(),
            )
            .unwrap(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_per_source_and_in_total_and_gives_places_back() {
        let g = gate(4, 2, &["127.0.0.0/8"]);
        let a1 = g.admit(ip("10.0.0.1")).unwrap();
        let _a2 = g.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(g.admit(ip("10.0.0.1")).unwrap_err(), Refusal::PerSource);
        // IPv4-mapped IPv6 is the same source.
        assert_eq!(
            g.admit(ip("::ffff:10.0.0.1")).unwrap_err(),
            Refusal::PerSource
        );
        let _b = g.admit(ip("10.0.0.2")).unwrap();
        let _e = g.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(g.admit(ip("127.0.0.1")).unwrap_err(), Refusal::Total);
        assert_eq!(g.open(), 4);
        drop(a1);
        assert_eq!(g.open(), 3);
        let _a3 = g.admit(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let g = gate(100, 1, &[]);
        let _a = g.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            g.admit(ip("2001:db8:1:2:ffff::9")).unwrap_err(),
            Refusal::PerSource
        );
        let _b = g.admit(ip("2001:db8:1:3::1")).unwrap();
    }

    #[test]
    fn prefixes() {
        let p = Prefix::parse("10.1.0.0/16").unwrap();
        assert!(p.contains(ip("10.1.200.3")));
        assert!(p.contains(ip("::ffff:10.1.0.1")));
        assert!(!p.contains(ip("10.2.0.1")));
        assert!(!p.contains(ip("::1")));
        assert!(Prefix::parse("::1").unwrap().contains(ip("::1")));
        assert!(Prefix::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["", "10.0.0.0/33", "::/129", "host", "10.0.0.0/x"] {
            assert!(Prefix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn behind_the_proxy_protocol_a_client_is_counted_by_what_it_holds_not_by_its_connection() {
        let limits = LimitsConfig {
            max_http_connections: 100,
            max_connections_per_source: 1,
            per_source_exempt: Vec::new(),
            ..LimitsConfig::default()
        };
        let proxies = super::super::proxied::Proxies::new(&[], "x-forwarded-for", true).unwrap();
        let g = Arc::new(Gate::new(&limits, proxies, metrics::Gauge::noop()).unwrap());
        // Connections are counted under their client once its header is read (not at accept)...
        let conns: Vec<_> = (0..3).map(|_| g.admit(ip("10.0.0.1")).unwrap()).collect();
        let first = Arc::new(conns.into_iter().next().unwrap());
        let _client = g.admit_client(ip("203.0.113.9"), &first).unwrap();
        assert_eq!(
            g.admit_client(ip("203.0.113.9"), &first).unwrap_err(),
            Refusal::PerSource
        );
        // ...and what a client holds of its own (an HTTP transport session) is counted too.
        let _session = g.admit_own(ip("198.51.100.7")).unwrap();
        assert_eq!(
            g.admit_own(ip("198.51.100.7")).unwrap_err(),
            Refusal::PerSource
        );
    }

    /// The accepted sockets have what the listener was given (the accept loop sets nothing
    /// per connection on Linux).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_the_unsent_low_mark_from_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        tune_listener(&listener);
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.tcp_nodelay().unwrap());
        assert_eq!(sock.tcp_notsent_lowat().unwrap(), NOTSENT_LOWAT);
    }

    #[test]
    fn zero_means_no_per_source_cap() {
        let g = gate(3, 0, &[]);
        let _p: Vec<_> = (0..3).map(|_| g.admit(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(g.admit(ip("10.0.0.1")).unwrap_err(), Refusal::Total);
    }
}
