//! The server under test: a `bluecam serve` child started with limits raised for load (or the
//! baseline relay, or a server given with `--server`), and what the bench knows of it.

use super::*;

/// The server under test.
pub(crate) struct Target {
    pub(crate) kind: TargetKind,
    pub(crate) http: String,
    pub(crate) addr: SocketAddr,
    /// Cluster runs: client `i` connects to `spread[i % len]` (empty: always `addr`).
    pub(crate) spread: Vec<SocketAddr>,
    pub(crate) secret: Secret,
    pub(crate) pid: Option<u32>,
    pub(crate) child: Option<Child>,
    pub(crate) _dir: Option<TempDir>,
}

impl Target {
    /// Where client number `i` connects.
    pub(crate) fn addr_for(&self, i: usize) -> SocketAddr {
        if self.spread.is_empty() {
            self.addr
        } else {
            self.spread[i % self.spread.len()]
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A directory removed on drop.
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Limits raised for load: the defaults protect a server from clients, a benchmark needs
/// clients that may go flat out. BENCHMARKS.md repeats this.
pub(crate) const BENCH_CONFIG: &str = r#"
demo = false
[limits]
rate_frames_per_sec = 100000000
rate_burst_frames = 100000000
rate_bytes_per_sec = 100000000000
rate_burst_bytes = 100000000000
max_peers_per_room = 1000
max_connections = 1000000
stun_rate_per_source = 1000000000
stun_burst_per_source = 1000000000
"#;

/// A command that runs `program`, on core 0 when pinning.
pub(crate) fn server_command(program: impl AsRef<std::ffi::OsStr>, pin: bool) -> Command {
    if pin {
        // taskset execs the program: the child's pid is the server's.
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Pins every thread of a running process to `cpus` (a taskset list).
pub(crate) fn pin_process(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus])
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .status()
        .context("--pin needs taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset failed for pid {pid}");
    Ok(())
}

pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

pub(crate) async fn start_target(args: &BenchArgs, kind: TargetKind) -> anyhow::Result<Target> {
    if let Some(url) = args.server.as_ref().filter(|_| kind == args.target) {
        let secret = match kind {
            TargetKind::Bluecam => args
                .secret
                .clone()
                .context("--server needs --secret or BLUECAM_API_SECRET")?,
            _ => String::new(),
        };
        let host = url
            .trim_start_matches("http://")
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .to_owned();
        let addr = tokio::net::lookup_host(&host)
            .await?
            .next()
            .context("cannot resolve the server")?;
        if args.pin
            && let Some(pid) = args.server_pid
        {
            pin_process(pid, "0")?;
        }
        return Ok(Target {
            kind,
            http: format!("http://{host}"),
            addr,
            spread: Vec::new(),
            secret: Secret::new(secret),
            pid: args.server_pid,
            child: None,
            _dir: None,
        });
    }
    let addr = free_addr()?;
    match kind {
        TargetKind::Bluecam => {}
        TargetKind::Baseline => {
            let child = server_command(std::env::current_exe()?, args.pin)
                .args(["baseline-server", "--bind"])
                .arg(addr.to_string())
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start the baseline server")?;
            let target = Target {
                kind,
                http: format!("http://{addr}"),
                addr,
                spread: Vec::new(),
                secret: Secret::new(String::new()),
                pid: Some(child.id()),
                child: Some(child),
                _dir: None,
            };
            for _ in 0..200 {
                if TcpStream::connect(addr).await.is_ok() {
                    return Ok(target);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            bail!("the baseline server did not start");
        }
        TargetKind::Peerjs | TargetKind::Matchbox => bail!(
            "start {} yourself and pass --server URL --server-pid PID (bench/compare.sh does)",
            kind.name()
        ),
    }
    let dir = std::env::temp_dir().join(format!("bluecam-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dir = TempDir(dir);
    std::fs::write(dir.0.join("bench.toml"), BENCH_CONFIG)?;
    let secret = bluecam_server::auth::random_token(32);
    let bin = ServerBin::find(args.bluecam.as_deref())?;
    let child = server_command(bin.path(), args.pin)
        .arg("serve")
        .arg("--config")
        .arg(dir.0.join("bench.toml"))
        .arg("--bind")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .env("BLUECAM_API_SECRET", &secret)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the server")?;
    let target = Target {
        kind,
        http: format!("http://{addr}"),
        addr,
        spread: Vec::new(),
        secret: Secret::new(secret),
        pid: Some(child.id()),
        child: Some(child),
        _dir: Some(dir),
    };
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http
            .get(format!("{}/healthz", target.http))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(target);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the server did not become healthy")
}
