//! Real services for tests and benchmarks (not for production use).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Where Debian keeps the server's programs (`initdb` and `postgres` are not on PATH there).
fn pg_bin(name: &str) -> PathBuf {
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = dirs.flatten().map(|d| d.path()).collect();
        versions.sort();
        if let Some(bin) = versions
            .iter()
            .rev()
            .map(|v| v.join("bin").join(name))
            .find(|p| p.exists())
        {
            return bin;
        }
    }
    PathBuf::from(name)
}

/// Runs `program` as `nobody` when we are root (`initdb` and `postgres` refuse root), through
/// `setpriv`, which execs it: the child's pid is the program's, so signals reach it.
fn as_postgres_user(program: &Path) -> Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL of a test or a benchmark, in its own data dir, on a free port; stopped and
/// removed on drop.
#[derive(Debug)]
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Serves TLS (with `server.crt` and `server.key` in `dir`).
    tls: bool,
}

impl Postgres {
    /// Starts one (`initdb` into a new temporary directory, then `postgres` on a free port).
    /// Panics when it cannot: this is for tests and benchmarks.
    #[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// [`Postgres::start`], serving TLS (as well as plain connections) with this certificate
    /// chain and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    #[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    fn start_with(tls: Option<(&str, &str)>) -> Self {
        let dir = std::env::temp_dir().join(format!("bluecam-pg-{}", crate::auth::random_token(9)));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        if let Some((cert, key)) = tls {
            std::fs::write(dir.join("server.crt"), cert).unwrap();
            std::fs::write(dir.join("server.key"), key).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                // (PostgreSQL refuses a key others can read.)
                std::fs::set_permissions(
                    dir.join("server.key"),
                    std::fs::Permissions::from_mode(0o600),
                )
                .unwrap();
            }
        }
        // The unprivileged user must own the directory.
        let _ = Command::new("chown")
            .args(["-R", "nobody"])
            .arg(&dir)
            .status();
        let status = as_postgres_user(&pg_bin("initdb"))
            .args(["-A", "trust", "-U", "bluecam", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb must be installed (apt-get install postgresql)");
        assert!(status.success(), "initdb failed");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if let Some(child) = Self::spawn(&dir, port, tls.is_some()) {
                return Self {
                    port,
                    dir,
                    child: Some(child),
                    tls: tls.is_some(),
                };
            }
        }
        panic!("postgres did not start");
    }

    /// `postgres` on `port` with the data in `dir`, once it accepts connections.
    #[allow(clippy::unwrap_used)]
    fn spawn(dir: &Path, port: u16, tls: bool) -> Option<Child> {
        let mut command = as_postgres_user(&pg_bin("postgres"));
        command
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir)
            .args(["-c", "fsync=off", "-c", "max_connections=200"]);
        if tls {
            command.args(["-c", "ssl=on", "-c"]).arg(format!(
                "ssl_cert_file={}",
                dir.join("server.crt").display()
            ));
            command
                .arg("-c")
                .arg(format!("ssl_key_file={}", dir.join("server.key").display()));
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Accepting connections is not yet accepting queries; give it a moment.
                std::thread::sleep(Duration::from_millis(200));
                return Some(child);
            }
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the server (its sessions die with it when they notice).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, on the same port with the same data (after [`Postgres::kill`] it
    /// recovers from its log first).
    #[allow(clippy::panic)]
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.is_none() {
            self.child = Self::spawn(&self.dir, self.port, self.tls);
            if self.child.is_none() && Instant::now() > deadline {
                panic!("postgres did not come back on port {}", self.port);
            }
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://bluecam@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SIGINT: PostgreSQL's fast shutdown.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p PORT ARGS…`: its output ("" when it cannot run).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// One `redis-server` of a [`RedisCluster`]. It runs under a shell that kills it when its
/// stdin (held here) closes, so no Redis outlives the process that started it, even one held
/// in a `static` that is never dropped.
#[derive(Debug)]
struct ClusterProc {
    pid: u32,
    shell: Child,
    _alive: std::process::ChildStdin,
}

/// A Redis Cluster of a test or a benchmark: three masters with a replica each (Debian's
/// `redis-server --cluster-enabled yes`, a 2 s node timeout, joined by `redis-cli --cluster
/// create`) on free ports of loopback, killed on drop. Its methods take `&self`, so one can be
/// shared by the scenarios of a test file.
#[derive(Debug)]
pub struct RedisCluster {
    ports: Vec<u16>,
    dir: PathBuf,
    procs: std::sync::Mutex<Vec<Option<ClusterProc>>>,
}

/// Redis processes of a cluster: three masters, then their replicas.
const CLUSTER_NODES: usize = 6;

/// A port free for Redis and for its cluster bus (the port + 10000).
#[allow(clippy::expect_used)]
fn free_port_pair(taken: &[u16]) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = l.local_addr().expect("its address").port();
        if port < 55_000
            && !taken.contains(&port)
            && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

/// (Its methods panic when the cluster cannot do what they ask: this is for tests and
/// benchmarks.)
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
impl RedisCluster {
    /// Starts six processes and joins them; returns once every slot is served and every
    /// replica is in sync (a replica that never synced cannot take over).
    pub fn start() -> Self {
        // A port found free can be taken (by another test's outgoing connection: the ports
        // are of the ephemeral range) before redis-server binds it: then it exits, and the
        // whole set is drawn again.
        let mut attempt = 0;
        let cluster = loop {
            attempt += 1;
            let mut ports = Vec::new();
            while ports.len() < CLUSTER_NODES {
                let p = free_port_pair(&ports);
                ports.push(p);
            }
            let dir = std::env::temp_dir().join(format!(
                "bluecam-redis-cluster-{}",
                crate::auth::random_token(9)
            ));
            let cluster = Self {
                procs: std::sync::Mutex::new((0..CLUSTER_NODES).map(|_| None).collect()),
                ports,
                dir,
            };
            if (0..CLUSTER_NODES).all(|i| cluster.try_spawn(i)) {
                break cluster;
            }
            assert!(
                attempt < 5,
                "redis-server did not start on 5 sets of free ports"
            );
        };
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_whole();
        cluster
    }

    fn index(&self, port: u16) -> usize {
        self.ports
            .iter()
            .position(|&p| p == port)
            .expect("a node of this cluster")
    }

    /// Starts the process of `ports[i]` in its own directory (a restart keeps `nodes.conf`,
    /// so it rejoins as what the cluster says it is: a master that failed over comes back as
    /// a replica).
    fn spawn(&self, i: usize) {
        let port = self.ports[i];
        assert!(self.try_spawn(i), "redis-server {port} did not start");
    }

    /// [`RedisCluster::spawn`]; false (and nothing left running) when it did not start: it
    /// exited (its port taken meanwhile) or did not answer within 10 s.
    fn try_spawn(&self, i: usize) -> bool {
        let port = self.ports[i];
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let mut shell = Command::new("sh")
            .args([
                "-c",
                r#"redis-server "$@" & r=$!; echo $r; read _; kill -9 $r"#,
                "sh",
            ])
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let mut line = String::new();
        if let Some(out) = shell.stdout.take() {
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
        }
        let pid: u32 = line.trim().parse().expect("redis-server's pid");
        let alive = shell.stdin.take().expect("the shell's stdin");
        let deadline = Instant::now() + Duration::from_secs(10);
        // (An exited one is a zombie of the shell until the shell is told to end.)
        let exited = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        };
        while redis_cli(port, &["ping"]).trim() != "PONG" {
            if Instant::now() >= deadline || exited() {
                drop(alive);
                let _ = shell.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.lock()[i] = Some(ClusterProc {
            pid,
            shell,
            _alive: alive,
        });
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<ClusterProc>>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ports of the processes running now.
    fn running(&self) -> Vec<u16> {
        let procs = self.lock();
        (0..CLUSTER_NODES)
            .filter(|&i| procs[i].is_some())
            .map(|i| self.ports[i])
            .collect()
    }

    /// Waits until every running process serves every slot, and every replica among them
    /// is in sync with its master.
    pub fn wait_whole(&self) {
        let running = self.running();
        let deadline = Instant::now() + Duration::from_secs(60);
        for port in running {
            while !redis_cli(port, &["cluster", "info"]).contains("cluster_state:ok") || {
                let info = redis_cli(port, &["info", "replication"]);
                info.contains("role:slave") && !info.contains("master_link_status:up")
            } {
                assert!(Instant::now() < deadline, "the Redis Cluster is not whole");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The URL BlueCam is given: one seed and two more (fred's syntax).
    pub fn url(&self) -> String {
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            self.ports[0], self.ports[1], self.ports[2]
        )
    }

    /// The ports of the running masters (those that serve slots), in port order.
    pub fn masters(&self) -> Vec<u16> {
        self.running()
            .into_iter()
            .filter(|&p| redis_cli(p, &["info", "replication"]).contains("role:master"))
            .collect()
    }

    /// The port of the master of `slot` now, asked of any process that answers.
    pub fn master_of(&self, slot: u16) -> u16 {
        for &port in &self.ports {
            for line in redis_cli(port, &["cluster", "nodes"]).lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                    continue;
                }
                let serves = f[8..].iter().any(|r| match r.split_once('-') {
                    Some((a, b)) => {
                        (a.parse().unwrap_or(u16::MAX)..=b.parse().unwrap_or(0)).contains(&slot)
                    }
                    None => r.parse() == Ok(slot),
                });
                let addr = f[1].split('@').next().unwrap_or_default();
                if let (true, Some(Ok(p))) = (serves, addr.rsplit(':').next().map(str::parse)) {
                    return p;
                }
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// SIGKILLs the process on `port` (a master's replica takes over after the node timeout).
    pub fn kill(&self, port: u16) {
        let proc = self.lock()[self.index(port)].take();
        if let Some(mut proc) = proc {
            let _ = Command::new("kill")
                .args(["-9", &proc.pid.to_string()])
                .status();
            drop(proc._alive);
            let _ = proc.shell.wait();
        }
    }

    /// Starts the process on `port` again (after [`RedisCluster::kill`]); it rejoins as a
    /// replica once the cluster has failed over.
    pub fn restart(&self, port: u16) {
        self.spawn(self.index(port));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let ports: Vec<u16> = self.ports.clone();
        for port in ports {
            self.kill(port);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Retention on a history database, as `history_retention_days` runs it, with the clock in the
/// test's hands: history written long ago and lately, then everything that ended before a
/// cutoff pruned, in rounds, and nothing else. Run on SQLite and on PostgreSQL.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub async fn retention_scenario(backend: crate::persist::history::Backend) {
    use crate::persist::history::{Attempt, NewEvent, NewSession, NodeInfo, Outbox, Recorder};
    const OLD: u64 = 1_000_000;
    const CUTOFF: u64 = 2_000_000;
    const LATE: u64 = 3_000_000;
    const ENDED_LONG_AGO: usize = 2_500;
    let room = format!("retention-{}", crate::auth::random_token(6));
    let room2 = room.clone();
    backend
        .run(move |db| {
            let room = room2.as_str();
            let mut open = |name: &str, joined: u64, left: Option<u64>| {
                let s = format!("{room}-{name}");
                db.insert_session(&NewSession {
                    session: &s,
                    room,
                    node: "",
                    peer: name,
                    identity: name,
                    name: None,
                    joined_at_ms: joined,
                })
                .unwrap();
                if let Some(left) = left {
                    db.close_session(&s, left, "left").unwrap();
                }
            };
            for n in 0..ENDED_LONG_AGO {
                open(&format!("old{n}"), OLD, Some(OLD + 1));
            }
            open("still-here", OLD, None);
            open("left-lately", OLD, Some(LATE));
            for (id, ended) in [
                ("c-old", Some(OLD + 5)),
                ("c-live", None),
                ("c-late", Some(LATE)),
            ] {
                let id = format!("{room}-{id}");
                db.insert_call(&id, room, None, None, OLD).unwrap();
                if let Some(ended) = ended {
                    db.end_call(&id, ended).unwrap();
                }
            }
            for (id, at) in [("e-failed", OLD), ("e-pending", OLD)] {
                db.insert_event(&NewEvent {
                    id,
                    endpoint: "http://127.0.0.1:9/",
                    room,
                    event_type: "peer.joined",
                    body: "{}",
                    at_ms: at,
                })
                .unwrap();
            }
            Ok(())
        })
        .await
        .unwrap();
    backend
        .run(move |db| {
            // The first of the two events fails (its endpoint's oldest).
            let due = db.due_events(OLD + 10, 10, "")?;
            let first = due.iter().find(|p| p.id == "e-failed").unwrap();
            db.attempted(first.seq, Attempt::Failed, Some("gone"))
        })
        .await
        .unwrap();
    let outbox = Outbox {
        subscribers: vec![],
        max_pending: 10,
        pending: std::sync::Arc::default(),
        added: std::sync::Arc::default(),
        dropped: metrics::Counter::noop(),
    };
    let node = NodeInfo {
        node: String::new(),
        dead_after_ms: 1000,
    };
    let recorder = Recorder::start(
        backend.clone(),
        outbox,
        node,
        crate::metrics::Metrics::new(),
    )
    .unwrap();
    let pruned = recorder.prune(CUTOFF).await.unwrap();
    assert_eq!(
        pruned,
        [ENDED_LONG_AGO as u64, 1, 1],
        "participants, calls, events"
    );
    // Pruned again: nothing more.
    assert_eq!(recorder.prune(CUTOFF).await.unwrap(), [0, 0, 0]);
    let (mut sessions, calls, pending) = backend
        .run(move |db| {
            let sessions: Vec<String> = db
                .sessions_between(&room, 0, None)?
                .into_iter()
                .map(|s| s.peer)
                .collect();
            Ok((
                sessions,
                db.calls_between(0, u64::MAX / 2)?.len(),
                db.pending_events()?,
            ))
        })
        .await
        .unwrap();
    sessions.sort();
    assert_eq!(sessions, ["left-lately", "still-here"]);
    assert_eq!(
        (calls, pending),
        (2, 1),
        "the live and late calls, the pending event"
    );
}
