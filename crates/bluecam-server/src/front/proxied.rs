//! The client's address behind proxies (docs/configuration.md, "Behind a proxy"). A request
//! from a trusted proxy (`trusted_proxies`) names its client in a header the proxy appends to
//! (`forwarded_header`: `X-Forwarded-For` or `Forwarded`): the client is the right-most hop that
//! is not a trusted proxy, so what a client writes into the header itself (the hops left of
//! its own) is never believed. A request from anyone else is its TCP peer, whatever headers it
//! carries. A listener behind an L4 load balancer can require the PROXY protocol
//! (`proxy_protocol`, v1 and v2): each connection then starts with a header naming its client,
//! read here before anything else.
//!
//! The per-source caps, the rates per source and the demo's limits then count the client, not
//! the proxy (`serve.rs`).

use super::serve::Prefix;
use axum::http::HeaderMap;
use std::{net::IpAddr, time::Duration};
use tokio::{io::AsyncReadExt as _, net::TcpStream};

/// The header trusted proxies name their client in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx's `$proxy_add_x_forwarded_for`, Caddy,
    /// most load balancers).
    XForwardedFor,
    /// RFC 7239: `Forwarded: for=client, for="[2001:db8::1]:443"`.
    Forwarded,
}

impl ForwardedHeader {
    pub fn parse(text: &str) -> Result<Self, crate::config::Invalid> {
        match text.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            other => Err(crate::config::Invalid::new(format!(
                "forwarded_header {other:?} must be x-forwarded-for or forwarded"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

/// Who may name the client, and how.
#[derive(Clone, Debug)]
pub struct Proxies {
    trusted: Vec<Prefix>,
    header: ForwardedHeader,
    /// Every connection must start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

impl Proxies {
    /// Fails on an entry that is not an address or prefix, or an unknown header.
    pub fn new(
        trusted: &[String],
        header: &str,
        proxy_protocol: bool,
    ) -> Result<Self, crate::config::Invalid> {
        Ok(Self {
            trusted: trusted
                .iter()
                .map(|p| Prefix::parse(p))
                .collect::<Result<_, _>>()?,
            header: ForwardedHeader::parse(header)?,
            proxy_protocol,
        })
    }

    /// None trusted, no PROXY protocol: every client is its TCP peer.
    pub fn none() -> Self {
        Self {
            trusted: Vec::new(),
            header: ForwardedHeader::XForwardedFor,
            proxy_protocol: false,
        }
    }

    /// Whether `trusted_proxies` names any.
    pub fn has_trusted(&self) -> bool {
        !self.trusted.is_empty()
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|p| p.contains(ip))
    }

    /// The client of a request that came from `peer`: `peer` itself unless it is a trusted
    /// proxy; then the right-most hop of the header that is not a trusted proxy. A hop that
    /// is not an address (`unknown`, an obfuscated identifier, garbage) ends the walk: the
    /// proxy that wrote it is the client as far as anyone can tell.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        // Every line of the header, in order, as one list (a proxy may add its own line).
        let hops: Vec<&str> = headers
            .get_all(self.header.name())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            let parsed = match self.header {
                ForwardedHeader::XForwardedFor => parse_hop(hop),
                ForwardedHeader::Forwarded => forwarded_for(hop).and_then(parse_hop),
            };
            let Some(ip) = parsed else {
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// The `for=` parameter of one element of a `Forwarded` header.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// One hop as an address: `1.2.3.4`, `1.2.3.4:567`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    let (ip, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// Why a connection's PROXY protocol header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no complete PROXY protocol header within the header timeout")]
    Timeout,
    #[error("the connection closed before its PROXY protocol header")]
    Closed,
    #[error("not a PROXY protocol header")]
    Invalid,
    #[error("a PROXY protocol header longer than {MAX_PROXY_HEADER} bytes")]
    TooLong,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Longest PROXY protocol header read (v1 is at most 107 bytes; v2's addresses with the TLVs
/// a load balancer adds fit well within this).
pub const MAX_PROXY_HEADER: usize = 1024;

/// Reads the PROXY protocol header (v1 or v2) at the start of `tcp`, and nothing after it. The
/// client it names; `None` for a header without one (v1 `UNKNOWN`, v2 `LOCAL`: a load
/// balancer's own health check), whose client is the TCP peer.
pub async fn read_proxy_header(
    tcp: &mut TcpStream,
    wait: Duration,
) -> Result<Option<IpAddr>, ProxyHeaderError> {
    tokio::time::timeout(wait, async {
        let mut buf = vec![0u8; MAX_PROXY_HEADER];
        loop {
            let n = tcp.peek(&mut buf).await?;
            if n == 0 {
                return Err(ProxyHeaderError::Closed);
            }
            use ppp::PartialResult as _;
            let parsed = ppp::HeaderResult::parse(&buf[..n]);
            if parsed.is_incomplete() {
                if n == buf.len() {
                    return Err(ProxyHeaderError::TooLong);
                }
                // The rest of the header has not arrived (a load balancer sends it in one
                // piece; this is the rare split): look again shortly.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let (len, client) = match parsed {
                ppp::HeaderResult::V1(Ok(h)) => (
                    h.header.len(),
                    match h.addresses {
                        ppp::v1::Addresses::Tcp4(a) => Some(IpAddr::V4(a.source_address)),
                        ppp::v1::Addresses::Tcp6(a) => Some(IpAddr::V6(a.source_address)),
                        ppp::v1::Addresses::Unknown => None,
                    },
                ),
                ppp::HeaderResult::V2(Ok(h)) => (
                    h.len(),
                    match (h.command, h.addresses) {
                        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                            Some(IpAddr::V4(a.source_address))
                        }
                        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                            Some(IpAddr::V6(a.source_address))
                        }
                        _ => None,
                    },
                ),
                _ => return Err(ProxyHeaderError::Invalid),
            };
            // Consume exactly the header: what follows is the connection's HTTP.
            let mut header = vec![0u8; len];
            tcp.read_exact(&mut header).await?;
            return Ok(client.map(|ip| ip.to_canonical()));
        }
    })
    .await
    .map_err(|_| ProxyHeaderError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_hop_and_only_from_a_trusted_peer() {
        let p = Proxies::new(
            &["127.0.0.1".into(), "10.0.0.0/8".into()],
            "x-forwarded-for",
            false,
        )
        .unwrap();
        let xff = |v: &[&str]| headers("x-forwarded-for", v);
        // From the proxy: the hop it appended.
        assert_eq!(
            p.client(ip("127.0.0.1"), &xff(&["203.0.113.7"])),
            ip("203.0.113.7")
        );
        // A client that wrote its own header: the proxy's hop (right-most) wins.
        assert_eq!(
            p.client(ip("127.0.0.1"), &xff(&["1.1.1.1, 203.0.113.7"])),
            ip("203.0.113.7")
        );
        // Through two trusted proxies, over several lines.
        assert_eq!(
            p.client(
                ip("127.0.0.1"),
                &xff(&["1.1.1.1, 198.51.100.2", "10.1.2.3"])
            ),
            ip("198.51.100.2")
        );
        // Not from a trusted proxy: the header is ignored.
        assert_eq!(
            p.client(ip("192.0.2.9"), &xff(&["203.0.113.7"])),
            ip("192.0.2.9")
        );
        // No header, or garbage: the proxy itself.
        assert_eq!(p.client(ip("127.0.0.1"), &xff(&[])), ip("127.0.0.1"));
        assert_eq!(
            p.client(ip("127.0.0.1"), &xff(&["unknown"])),
            ip("127.0.0.1")
        );
        assert_eq!(
            p.client(ip("127.0.0.1"), &xff(&["203.0.113.7, garbage"])),
            ip("127.0.0.1")
        );
        // Every hop trusted: the left-most.
        assert_eq!(
            p.client(ip("127.0.0.1"), &xff(&["10.0.0.5, 10.0.0.6"])),
            ip("10.0.0.5")
        );
        // Ports and IPv6, IPv4-mapped as IPv4.
        assert_eq!(
            p.client(ip("127.0.0.1"), &xff(&["203.0.113.7:4711"])),
            ip("203.0.113.7")
        );
        assert_eq!(
            p.client(ip("::ffff:127.0.0.1"), &xff(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn forwarded_is_read_when_chosen_and_only_then() {
        let p = Proxies::new(&["127.0.0.1".into()], "forwarded", false).unwrap();
        let h = headers(
            "forwarded",
            &[r#"for=1.1.1.1;proto=https, for="[2001:db8::7]:443";by=x"#],
        );
        assert_eq!(p.client(ip("127.0.0.1"), &h), ip("2001:db8::7"));
        assert_eq!(
            p.client(ip("127.0.0.1"), &headers("forwarded", &["for=_hidden"])),
            ip("127.0.0.1")
        );
        // X-Forwarded-For is not this proxy's header.
        assert_eq!(
            p.client(
                ip("127.0.0.1"),
                &headers("x-forwarded-for", &["203.0.113.7"])
            ),
            ip("127.0.0.1")
        );
        assert!(Proxies::new(&[], "x-real-ip", false).is_err());
        assert!(Proxies::new(&["not an address".into()], "forwarded", false).is_err());
    }
}
