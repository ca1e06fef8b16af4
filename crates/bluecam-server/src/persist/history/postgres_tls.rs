//! How a node reaches PostgreSQL over TLS: libpq's `sslmode` and `sslrootcert` URL parameters
//! (tokio-postgres knows neither `verify-ca`/`verify-full` nor `sslrootcert`), with rustls.
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | |
//! | `allow`, `prefer` (the default, as libpq's) | when the server offers it | not checked |
//! | `require` | always, or no connection | checked as `verify-ca` when `sslrootcert` is given (as libpq does), else not |
//! | `verify-ca` | always | signed by `sslrootcert`'s CAs, or the system's |
//! | `verify-full` | always | that, and issued for the URL's host |
//!
//! A mode that asks for TLS never ends in a plaintext connection: the connection fails instead.

use crate::persist::store::StoreError;
use rustls::{
    DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

fn invalid(what: impl Into<String>) -> StoreError {
    StoreError::Postgres(what.into().into())
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Nothing (encryption only).
    Nothing,
    /// The chain, not the name.
    Chain,
    /// The chain and the name.
    Full,
}

/// The connection settings of `url` and the TLS to use with them (`None`: never TLS).
pub(super) fn settings(
    url: &str,
) -> Result<(tokio_postgres::Config, Option<MakeRustlsConnect>), StoreError> {
    let mut mode = None;
    let mut root = None;
    let url = match url::Url::parse(url) {
        Ok(mut parsed) if matches!(parsed.scheme(), "postgres" | "postgresql") => {
            let mut kept = Vec::new();
            for (k, v) in parsed.query_pairs() {
                match &*k {
                    "sslmode" => mode = Some(v.into_owned()),
                    "sslrootcert" => root = Some(v.into_owned()),
                    _ => kept.push((k.into_owned(), v.into_owned())),
                }
            }
            parsed.set_query(None);
            if !kept.is_empty() {
                parsed.query_pairs_mut().extend_pairs(&kept);
            }
            parsed.to_string()
        }
        // (A `key=value` string goes to tokio-postgres as it is.)
        _ => url.to_owned(),
    };
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| invalid(format!("the database URL is not valid: {e}")))?;
    let (ssl_mode, check) = match mode.as_deref() {
        None => (config.get_ssl_mode(), Check::Nothing),
        Some("disable") => (SslMode::Disable, Check::Nothing),
        Some("allow" | "prefer") => (SslMode::Prefer, Check::Nothing),
        Some("require") if root.is_some() => (SslMode::Require, Check::Chain),
        Some("require") => (SslMode::Require, Check::Nothing),
        Some("verify-ca") => (SslMode::Require, Check::Chain),
        Some("verify-full") => (SslMode::Require, Check::Full),
        Some(other) => {
            return Err(invalid(format!(
                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    config.ssl_mode(ssl_mode);
    if ssl_mode == SslMode::Disable {
        if root.is_some() {
            return Err(invalid("sslrootcert is set with sslmode=disable"));
        }
        return Ok((config, None));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(roots(root.as_deref())?);
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
        .build()
        .map_err(|e| invalid(format!("TLS for PostgreSQL: {e}")))?;
    let verifier = Arc::new(Verifier {
        webpki,
        check,
        provider: Arc::clone(&provider),
    });
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS for PostgreSQL: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((config, Some(MakeRustlsConnect::new(tls))))
}

/// The CAs of `sslrootcert` (a PEM file), or the system's.
fn roots(path: Option<&str>) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    match path {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| invalid(format!("sslrootcert {path}: {e}"));
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if roots.is_empty() {
                return Err(invalid(format!("sslrootcert {path} holds no certificate")));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// The server's certificate checked as `check` says; the handshake's signatures always.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    check: Check,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.check {
            Check::Nothing => Ok(ServerCertVerified::assertion()),
            Check::Full => {
                self.webpki
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
            Check::Chain => match self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp,
                now,
            ) {
                // (verify-ca: any name, as long as the chain is good.)
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ssl_parameters_are_read_and_taken_off_the_url() {
        let (c, tls) = settings("postgres://u@h:5/db?sslmode=disable&application_name=x").unwrap();
        assert!(tls.is_none());
        assert_eq!(c.get_ssl_mode(), SslMode::Disable);
        assert_eq!(c.get_application_name(), Some("x"));
        let (c, tls) = settings("postgres://u@h:5/db?sslmode=verify-full").unwrap();
        assert!(tls.is_some());
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
        let (c, _) = settings("postgres://u@h:5/db").unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Prefer, "libpq's default");
        for bad in [
            "postgres://u@h/db?sslmode=verify",
            "postgres://u@h/db?sslmode=disable&sslrootcert=/x",
            "postgres://u@h/db?sslmode=verify-ca&sslrootcert=/no/such/file",
        ] {
            assert!(settings(bad).is_err(), "{bad}");
        }
    }
}
