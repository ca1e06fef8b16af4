//! A real server on port 0 and clients for it.

use bluecam_proto::{ClientMessage, CloseCode, Joined, ServerMessage};
use bluecam_server::{Claims, Config, Secret};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::{net::SocketAddr, path::PathBuf, time::Duration};
use tokio::{net::TcpStream, task::JoinHandle};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};
use tokio_util::sync::CancellationToken;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);
pub const SECRET: &str = "test-secret-0123456789abcdefghijklmn";

pub struct TestServer {
    pub addr: SocketAddr,
    /// The default demo's key (its link is `/?demo=KEY`), when that demo is on.
    pub demo_key: Option<String>,
    pub secret: Secret,
    pub dir: PathBuf,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    /// A server on a runtime of its own ([`TestServer::crashable`]): the signal that drops it.
    crash: Option<std::sync::mpsc::Sender<()>>,
    keep_dir: bool,
}

pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "bluecam-it-{}",
        bluecam_server::auth::random_token(9)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::in_dir(temp_dir(), tweak).await
    }

    pub async fn in_dir(dir: PathBuf, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            data_dir: dir.clone(),
            api_secret: Some(SECRET.into()),
            ..Config::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = bluecam_server::Server::bind(listener, config)
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let demo_key = server.demo_key().map(str::to_owned);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            server.run(token).await.unwrap();
        });
        Self {
            addr,
            demo_key,
            secret: Secret::new(SECRET),
            dir,
            shutdown,
            task: Some(task),
            crash: None,
            keep_dir: false,
        }
    }

    /// A server that can crash: it runs on a runtime of its own, on a thread of its own, and
    /// [`TestServer::crash`] drops that runtime at once: every task of the node stops where it
    /// is (no drain, no goodbye, no last heartbeat) and its sockets close, as a SIGKILL would
    /// do to a process. (Its blocking threads may finish what they hold.)
    pub async fn crashable(tweak: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        let dir = temp_dir();
        let mut config = Config {
            data_dir: dir.clone(),
            api_secret: Some(SECRET.into()),
            ..Config::default()
        };
        tweak(&mut config);
        let (started, ready) = tokio::sync::oneshot::channel();
        let (crash, crashed) = std::sync::mpsc::channel::<()>();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let server = rt.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                bluecam_server::Server::bind(listener, config)
                    .await
                    .unwrap()
            });
            let _ = started.send((
                server.local_addr().unwrap(),
                server.demo_key().map(str::to_owned),
            ));
            rt.spawn(async move { server.run(token).await.unwrap() });
            // Until the crash (or the test's end): then every task is dropped, not finished.
            let _ = crashed.recv();
            rt.shutdown_background();
        });
        let (addr, demo_key) = ready.await.unwrap();
        Self {
            addr,
            demo_key,
            secret: Secret::new(SECRET),
            dir,
            shutdown,
            task: None,
            crash: Some(crash),
            keep_dir: false,
        }
    }

    /// Crashes a [`TestServer::crashable`] server.
    pub fn crash(mut self) {
        if let Some(crash) = self.crash.take() {
            let _ = crash.send(());
        }
    }

    /// Shuts down and waits; the data dir is kept for a restart.
    pub async fn stop(mut self) -> PathBuf {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        }
        self.keep_dir = true;
        self.dir.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// An HTTP client; with the default demo on, like a browser of this machine that opened
    /// the demo link (it carries the demo's cookie).
    pub fn http(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = &self.demo_key
            && let Ok(cookie) = format!("bluecam_demo={key}").parse()
        {
            headers.insert(reqwest::header::COOKIE, cookie);
        }
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap()
    }

    /// The body of an unauthenticated GET.
    pub async fn get_text(&self, path: &str) -> String {
        let res = self.http().get(self.url(path)).send().await.unwrap();
        res.text().await.unwrap()
    }

    /// An authenticated GET of the HTTP API; its JSON body.
    pub async fn api_get(&self, path: &str) -> Value {
        self.http()
            .get(self.url(path))
            .bearer_auth(SECRET)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Creates a room through the API and returns its JSON.
    pub async fn create_room(&self, body: Value) -> Value {
        let res = self
            .http()
            .post(self.url("/v1/rooms"))
            .bearer_auth(SECRET)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "room creation failed");
        res.json().await.unwrap()
    }

    /// Deletes a room through the API (the room closes for everyone in it); `204` expected.
    pub async fn delete_room(&self, room: &str) {
        let res = self
            .http()
            .delete(self.url(&format!("/v1/rooms/{room}")))
            .bearer_auth(SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204, "room deletion failed");
    }

    /// A room with a fresh id.
    pub async fn room(&self) -> String {
        self.create_room(json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn token(&self, room: &str, identity: &str) -> String {
        self.token_with(room, identity, |_| {})
    }

    pub fn token_with(
        &self,
        room: &str,
        identity: &str,
        tweak: impl FnOnce(&mut Claims),
    ) -> String {
        let now = now();
        let mut claims = Claims {
            sub: identity.into(),
            room: room.into(),
            exp: now + 600,
            iat: now,
            nbf: None,
            name: None,
            metadata: None,
            permissions: None,
        };
        tweak(&mut claims);
        self.secret.mint(&claims).unwrap()
    }

    /// Whether the API lists `peer` in `room` as connected (`None`: not listed).
    pub async fn presence(&self, room: &str, peer: &str) -> Option<bool> {
        let list: Value = self.api_get(&format!("/v1/rooms/{room}/peers")).await;
        list["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == peer)
            .and_then(|p| p["connected"].as_bool())
    }

    /// Waits until the API lists `peer` as present but not connected.
    pub async fn wait_disconnected(&self, room: &str, peer: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.presence(room, peer).await == Some(false) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "peer never detached"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Connects and resumes a session as `identity`; panics unless `joined` comes back with
    /// `resumed: true`. Returns the client and its `joined` frame.
    pub async fn resume(
        &self,
        room: &str,
        identity: &str,
        creds: bluecam_proto::ResumeCredentials,
    ) -> (Client, Value) {
        let mut c = Client::connect(self.addr).await;
        c.send_frame(&ClientMessage::Join {
            token: self.token(room, identity),
            resume: Some(creds),
        })
        .await;
        let joined = c.expect_joined().await;
        assert_eq!(joined["resumed"], true, "{joined}");
        (c, joined)
    }

    /// Resumes as a client does: an `unavailable` refusal (retryable) is tried again for up
    /// to `WAIT`; anything but `joined` or `unavailable` panics.
    pub async fn resume_retrying(
        &self,
        room: &str,
        identity: &str,
        creds: bluecam_proto::ResumeCredentials,
    ) -> (Client, Value) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut c = Client::connect(self.addr).await;
            c.send_frame(&ClientMessage::Join {
                token: self.token(room, identity),
                resume: Some(creds.clone()),
            })
            .await;
            let v = c.recv().await;
            if v["op"] == "joined" {
                assert_eq!(v["resumed"], true, "{v}");
                c.joined = Some(serde_json::from_value(v.clone()).unwrap());
                return (c, v);
            }
            assert_eq!(v["code"], "unavailable", "expected joined, got {v}");
            assert!(tokio::time::Instant::now() < deadline, "still refused: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connects and joins; panics unless `joined` comes back.
    pub async fn join(&self, room: &str, identity: &str) -> Client {
        let mut c = Client::connect(self.addr).await;
        c.send_frame(&ClientMessage::Join {
            token: self.token(room, identity),
            resume: None,
        })
        .await;
        c.expect_joined().await;
        c
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(crash) = self.crash.take() {
            let _ = crash.send(());
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Reads a raw connection until the server closes it (EOF or reset); everything it sent.
pub async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open"),
            Ok(Ok(0) | Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What a client saw when the server closed its socket.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed(pub Option<u16>);

/// The credentials that resume `c`'s session.
pub fn creds(c: &Client) -> bluecam_proto::ResumeCredentials {
    let s = &c.joined.as_ref().unwrap().session;
    bluecam_proto::ResumeCredentials {
        session: s.id.clone(),
        secret: s.secret.clone(),
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub joined: Option<Joined>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
            .await
            .unwrap();
        Self { ws, joined: None }
    }

    pub fn id(&self) -> String {
        self.joined.as_ref().unwrap().self_.id.to_string()
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.unwrap();
    }

    pub async fn send_frame(&mut self, frame: &ClientMessage<'_>) {
        self.send_text(frame.to_json()).await;
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    /// The next text frame as JSON, or the close code if the server closed.
    pub async fn next(&mut self) -> Result<Value, Closed> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    // Every server frame must parse with the protocol crate too.
                    ServerMessage::from_json(&t).unwrap();
                    return Ok(serde_json::from_str(&t).unwrap());
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Closed(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(Closed(None)),
            }
        }
    }

    /// The next frame, which must be a text frame.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Ok(v) => v,
            Err(c) => panic!("expected a frame, got close {c:?}"),
        }
    }

    /// Skips frames until one with this op.
    pub async fn recv_op(&mut self, op: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["op"] == op {
                return v;
            }
        }
    }

    /// Skips frames until a `peer_left`, which must be about `peer` with `reason`.
    pub async fn expect_left(&mut self, peer: &str, reason: &str) {
        let left = self.recv_op("peer_left").await;
        assert_eq!(
            (left["peer"]["id"].as_str(), left["reason"].as_str()),
            (Some(peer), Some(reason)),
            "{left}"
        );
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Err(Closed(code)) = self.next().await {
                return code;
            }
        }
    }

    pub async fn expect_joined(&mut self) -> Value {
        let v = self.recv().await;
        assert_eq!(v["op"], "joined", "expected joined, got {v}");
        self.joined = Some(serde_json::from_value(v.clone()).unwrap());
        v
    }

    /// Expects an `error` with this code; returns it.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["op"], "error", "expected error {code}, got {v}");
        assert_eq!(v["code"], code, "got {v}");
        v
    }

    /// Proves the connection is still usable and that nothing else was waiting for it: ping,
    /// and the very next frame must be the pong.
    pub async fn assert_alive(&mut self) {
        self.send_json(json!({"op": "ping"})).await;
        let next = self.recv().await;
        assert_eq!(
            next["op"], "pong",
            "expected nothing but the pong, got {next}"
        );
    }

    /// Sends a join that must fail with `code` and close with `close`.
    pub async fn join_fails(addr: SocketAddr, token: String, code: &str, close: CloseCode) {
        let mut c = Client::connect(addr).await;
        c.send_frame(&ClientMessage::Join {
            token,
            resume: None,
        })
        .await;
        let e = c.expect_error(code).await;
        assert_eq!(e["close"], close.code());
        assert_eq!(c.closed().await, Some(close.code()));
    }
}
