//! Built-in TLS (`--tls-cert`/`--tls-key`): HTTPS with a certificate the client trusts.

use crate::common::{SECRET, TestServer, read_to_close};
use tokio::io::AsyncWriteExt as _;

/// A TLS server with a fresh self-signed certificate for `localhost`.
async fn tls_server(
    tweak: impl FnOnce(&mut bluecam_server::Config),
) -> (TestServer, rcgen::CertifiedKey<rcgen::KeyPair>) {
    let dir = crate::common::temp_dir();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let s = TestServer::in_dir(dir.clone(), |c| {
        c.tls = Some(bluecam_server::config::TlsConfig { cert, key });
        tweak(c);
    })
    .await;
    (s, generated)
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_cut_and_caps_close_without_plaintext() {
    let (s, _) = tls_server(|c| {
        c.limits.http_header_timeout_secs = 1;
        c.limits.max_connections_per_source = 1;
        c.limits.per_source_exempt = Vec::new();
    })
    .await;
    // Silent: no ClientHello. Cut by the handshake timeout (it stayed open before).
    let mut silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // Over the per-source cap meanwhile: closed at once, with no plain-text 503 that the
    // client would take for a broken handshake.
    let mut over = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let _ = over.write_all(b"\x16\x03\x01").await;
    assert!(read_to_close(&mut over).await.is_empty());
    assert!(read_to_close(&mut silent).await.is_empty());
}

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    let (s, generated) = tls_server(|_| {}).await;
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", s.addr.port());
    let res = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = client
        .post(format!("{base}/v1/rooms"))
        .bearer_auth(SECRET)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // Plain HTTP on the TLS port gets nowhere.
    assert!(s.http().get(s.url("/healthz")).send().await.is_err());
}

#[tokio::test]
async fn a_missing_certificate_fails_at_start() {
    let dir = crate::common::temp_dir();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = bluecam_server::Config {
        data_dir: dir.clone(),
        api_secret: Some(SECRET.into()),
        tls: Some(bluecam_server::config::TlsConfig {
            cert: dir.join("nope.pem"),
            key: dir.join("nope.key"),
        }),
        ..Default::default()
    };
    let err = bluecam_server::Server::bind(listener, config)
        .await
        .unwrap_err();
    assert!(matches!(err, bluecam_server::ServerError::Tls(_)), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
