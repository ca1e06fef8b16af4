//! The Redis client's settings (TLS included) and how a client is built from them.

use super::*;
use crate::config::Invalid;

/// The client settings of `url`. A `rediss://` URL gets verified TLS (rustls): against the
/// PEM CA bundle `ca` when given, else the system's roots; any TLS setting that cannot be
/// honoured is an error, never a silent plaintext connection.
pub fn redis_config(url: &str, ca: Option<&std::path::Path>) -> Result<FredConfig, Invalid> {
    let mut config =
        FredConfig::from_url(url).map_err(|e| Invalid::because("the Redis URL is not valid", e))?;
    let tls_url = url.starts_with("rediss") || url.starts_with("valkeys");
    match (tls_url, ca) {
        (false, Some(_)) => {
            return Err(Invalid::new(
                "redis_ca is set but the Redis URL is not rediss://: refusing to connect \
                 without TLS",
            ));
        }
        (true, Some(ca)) => {
            use rustls::pki_types::{CertificateDer, pem::PemObject as _};
            let what = format!("redis_ca {}", ca.display());
            let bad = |e: rustls::pki_types::pem::Error| Invalid::because(what.clone(), e);
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(bad)? {
                roots
                    .add(cert.map_err(bad)?)
                    .map_err(|e| Invalid::because(what.clone(), e))?;
            }
            if roots.is_empty() {
                return Err(Invalid::new(format!("{what} holds no certificate")));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| Invalid::because("TLS for Redis", e))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.tls = Some(fred::types::config::TlsConnector::from(tls).into());
        }
        // fred fills it in from the URL (system roots); make sure it did.
        (true, None) if config.tls.is_none() => {
            let tls = fred::types::config::TlsConnector::default_rustls()
                .map_err(|e| Invalid::because("TLS for Redis", e))?;
            config.tls = Some(tls.into());
        }
        _ => {}
    }
    Ok(config)
}

/// A fred client of `config` with reconnection forever (every 250 ms to 2 s).
pub(super) fn build(config: &FredConfig) -> Result<Builder, fred::error::Error> {
    let mut builder = Builder::from_config(config.clone());
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 250, 2_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = COMMAND_TIMEOUT;
            c.internal_command_timeout = COMMAND_TIMEOUT;
            // A command reported as failed must never be replayed after a reconnection: its
            // sender was told it was not delivered, and may have sent it again.
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
            // Events from other nodes queue here while this node applies them.
            p.broadcast_channel_capacity = 1 << 16;
        });
    Ok(builder)
}
