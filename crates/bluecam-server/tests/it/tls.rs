//! Built-in TLS (`--tls-cert`/`--tls-key`): HTTPS with a certificate the client trusts.

use crate::common::{SECRET, TestServer};

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    let dir = crate::common::temp_dir();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let s = TestServer::in_dir(dir.clone(), |c| {
        c.tls = Some(bluecam_server::config::TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        });
    })
    .await;
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
