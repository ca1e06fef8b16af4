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
}

impl Postgres {
    /// Starts one (`initdb` into a new temporary directory, then `postgres` on a free port).
    /// Panics when it cannot: this is for tests and benchmarks.
    #[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("bluecam-pg-{}", crate::auth::random_token(9)));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
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
            let mut child = as_postgres_user(&pg_bin("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
                .arg(&dir)
                .args(["-c", "fsync=off", "-c", "max_connections=200"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // Accepting connections is not yet accepting queries; give it a moment.
                    std::thread::sleep(Duration::from_millis(200));
                    return Self {
                        port,
                        dir,
                        child: Some(child),
                    };
                }
                if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("postgres did not start");
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
