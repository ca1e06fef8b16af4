//! The client's address behind proxies: a real nginx from Debian in front (WebSocket and the
//! HTTP transport through it), clients on several loopback addresses, the per-source cap
//! counting each client and not the proxy; a forged header from a peer that is not a proxy
//! ignored; and a listener that requires the PROXY protocol (v1 and v2).

use crate::common::{Client, SECRET, TestServer, WAIT, temp_dir};
use bluecam_proto::ClientMessage;
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

/// An nginx of this test in front of `upstream`, as docs/deploying.md configures it.
struct Nginx {
    child: Child,
    port: u16,
    _dir: PathBuf,
}

impl Nginx {
    fn start(upstream: SocketAddr) -> Self {
        let dir = temp_dir();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        // (Run by root, the workers stay root: no other user needs to read the temp dirs.)
        let user = if running_as_root() { "user root;" } else { "" };
        let conf = format!(
            r#"{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_read_timeout 120s;
        }}
    }}
}}
"#
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx must be installed (apt-get install nginx)");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_bin() -> &'static str {
    if std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
    })
}

/// A TCP connection to `to` from the loopback address `from`.
async fn tcp_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Joins `room` over a WebSocket to `to` from `from`, after `prefix` (a PROXY header) and
/// with `headers`; the joined client, or the HTTP status (or `None`: the connection was
/// closed) of the refusal.
async fn join_from(
    server: &TestServer,
    from: &str,
    to: SocketAddr,
    room: &str,
    identity: &str,
    prefix: &[u8],
    headers: &[(&str, &str)],
) -> Result<Client, Option<u16>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut tcp = tcp_from(from, to).await;
    tcp.write_all(prefix).await.unwrap();
    let mut req = format!("ws://{to}/v1/ws").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let ws = match tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("the handshake hung")
    {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            return Err(Some(res.status().as_u16()));
        }
        Err(_) => return Err(None),
    };
    let mut c = Client { ws, joined: None };
    c.send_frame(&ClientMessage::Join {
        token: server.token(room, identity),
        resume: None,
    })
    .await;
    c.expect_joined().await;
    Ok(c)
}

/// Behind nginx with `trusted_proxies`, each client is counted under its own address: two
/// WebSockets each for two clients with a cap of two, the third of one refused with 503, an
/// HTTP transport request of the full one refused too, another client's served. A client
/// that is not the proxy cannot claim another address with a header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_each_client_is_counted_under_its_own_address() {
    let server = TestServer::with(|c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
        c.limits.per_source_exempt = Vec::new();
        c.limits.max_connections_per_source = 2;
    })
    .await;
    let nginx = Nginx::start(server.addr);
    let room = server
        .create_room(serde_json::json!({"maxPeers": 20}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let via = nginx.addr();
    let a1 = join_from(&server, "127.0.0.2", via, &room, "a1", b"", &[]).await;
    let a2 = join_from(&server, "127.0.0.2", via, &room, "a2", b"", &[]).await;
    assert!(a1.is_ok() && a2.is_ok());
    // The third of 127.0.0.2: over its cap (nginx passes the 503 on).
    let a3 = join_from(&server, "127.0.0.2", via, &room, "a3", b"", &[]).await;
    assert_eq!(a3.err(), Some(Some(503)));
    // Its HTTP requests too, while it holds its two.
    let http_a = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let res = http_a
        .get(format!("http://{via}/v1/rooms/{room}"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    // Another client through the same proxy: its own two, and the HTTP transport.
    let mut b1 = join_from(&server, "127.0.0.3", via, &room, "b1", b"", &[])
        .await
        .unwrap();
    let _b2 = join_from(&server, "127.0.0.3", via, &room, "b2", b"", &[])
        .await
        .unwrap();
    let mut h = crate::transport::HttpClient::open(
        &format!("http://{via}"),
        &ClientMessage::Join {
            token: server.token(&room, "h"),
            resume: None,
        },
    )
    .await;
    b1.recv_op("peer_joined").await;
    b1.recv_op("peer_joined").await;
    b1.send_json(serde_json::json!({"op": "send", "msg": "through nginx"}))
        .await;
    assert_eq!(h.recv_op("message").await["msg"], "through nginx");
    // One of 127.0.0.2 closes: its place is free again.
    drop(a1);
    let deadline = Instant::now() + WAIT;
    loop {
        match join_from(&server, "127.0.0.2", via, &room, "a4", b"", &[]).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the place never came back: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Straight to the server, not from the proxy: a header naming another address is
    // ignored (127.0.0.3 is full, this one is counted as 127.0.0.4).
    let direct = join_from(
        &server,
        "127.0.0.4",
        server.addr,
        &room,
        "d",
        b"",
        &[("x-forwarded-for", "127.0.0.3")],
    )
    .await;
    assert!(direct.is_ok());
    drop(a2);
}

/// A listener that requires the PROXY protocol: the client each header names (v1 or v2) is
/// counted; a connection without a header, or from a peer that is not a trusted proxy, is
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_proxy_protocol_the_header_names_the_client() {
    let server = TestServer::with(|c| {
        c.proxy_protocol = true;
        c.trusted_proxies = vec!["127.0.0.1".into()];
        c.limits.per_source_exempt = Vec::new();
        c.limits.max_connections_per_source = 1;
    })
    .await;
    let to = server.addr;
    let v1 = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 5555 8080\r\n").into_bytes();
    // Every connection needs its header, the API's too.
    let room = {
        let mut tcp = tcp_from("127.0.0.1", to).await;
        let request = format!(
            "POST /v1/rooms HTTP/1.1\r\nhost: {to}\r\nauthorization: Bearer {SECRET}\r\n\
             content-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
        );
        tcp.write_all(&v1("192.0.2.1")).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let answer = String::from_utf8(crate::common::read_to_close(&mut tcp).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
        let body: serde_json::Value =
            serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        body["id"].as_str().unwrap().to_owned()
    };
    let v2 = |client: [u8; 4]| {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend([0x21, 0x11, 0, 12]);
        h.extend(client);
        h.extend([127, 0, 0, 1, 0x15, 0xb3, 0x1f, 0x90]);
        h
    };
    let first = join_from(
        &server,
        "127.0.0.1",
        to,
        &room,
        "a",
        &v1("203.0.113.9"),
        &[],
    )
    .await;
    assert!(first.is_ok());
    // The same client again: over its cap of one (the connection is closed).
    let again = join_from(
        &server,
        "127.0.0.1",
        to,
        &room,
        "b",
        &v1("203.0.113.9"),
        &[],
    )
    .await;
    assert!(again.is_err());
    // Another client, in a v2 header.
    let other = join_from(
        &server,
        "127.0.0.1",
        to,
        &room,
        "c",
        &v2([203, 0, 113, 10]),
        &[],
    )
    .await;
    assert!(other.is_ok());
    // No header: closed.
    assert!(
        join_from(&server, "127.0.0.1", to, &room, "d", b"", &[])
            .await
            .is_err()
    );
    // A header from a peer that is not a trusted proxy: closed.
    assert!(
        join_from(
            &server,
            "127.0.0.2",
            to,
            &room,
            "e",
            &v1("198.51.100.1"),
            &[]
        )
        .await
        .is_err()
    );
    // The first client's place comes back when it leaves.
    drop(first);
    let deadline = Instant::now() + WAIT;
    while join_from(
        &server,
        "127.0.0.1",
        to,
        &room,
        "f",
        &v1("203.0.113.9"),
        &[],
    )
    .await
    .is_err()
    {
        assert!(Instant::now() < deadline, "the place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(other);
}
