//! A Redis Cluster started by the bench: three masters with a replica each (Debian's
//! `redis-server --cluster-enabled yes`, joined by `redis-cli --cluster create`), on free
//! ports of loopback, killed on drop. It reports the load of each shard (commands processed
//! and CPU seconds, from `INFO`), and can lose a master (SIGKILL: its replica takes over) or a
//! shard's data (`FLUSHALL` on its master).

use super::*;

/// One Redis Cluster of six processes.
pub(super) struct RedisCluster {
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: TempDir,
}

/// `redis-cli -p PORT ARGS…`: its output, or "" when it could not run.
pub(super) fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A port free for Redis and its cluster bus (the port + 10000).
fn free_port_pair(taken: &[u16]) -> anyhow::Result<u16> {
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if port < 55_000
            && !taken.contains(&port)
            && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return Ok(port);
        }
    }
    bail!("no free port pair for a Redis Cluster node")
}

/// A field of `INFO`'s answer.
fn info_field(info: &str, name: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// What a Redis process has done so far: commands processed and CPU seconds (user + system).
pub(super) fn redis_counters(port: u16) -> (f64, f64) {
    let info = cli(port, &["info"]);
    let commands = info_field(&info, "total_commands_processed").unwrap_or(0.0);
    let cpu = info_field(&info, "used_cpu_user").unwrap_or(0.0)
        + info_field(&info, "used_cpu_sys").unwrap_or(0.0);
    (commands, cpu)
}

/// The load of each Redis between two readings of [`redis_counters`], per second of `secs`.
pub(super) fn load_between(
    ports: &[u16],
    before: &[(f64, f64)],
    after: &[(f64, f64)],
    secs: f64,
) -> serde_json::Value {
    let shards: Vec<serde_json::Value> = ports
        .iter()
        .zip(before.iter().zip(after))
        .map(|(port, ((c0, u0), (c1, u1)))| {
            serde_json::json!({
                "port": port,
                "commands_per_sec": ((c1 - c0) / secs.max(1e-9)).round(),
                "cpu_share": ((u1 - u0) / secs.max(1e-9) * 1000.0).round() / 1000.0,
            })
        })
        .collect();
    serde_json::Value::Array(shards)
}

impl RedisCluster {
    /// Starts six processes and joins them as three masters with a replica each; waits until
    /// every slot is served and every replica is in sync.
    pub(super) fn start() -> anyhow::Result<Self> {
        let mut ports = Vec::new();
        for _ in 0..6 {
            ports.push(free_port_pair(&ports)?);
        }
        let dir = std::env::temp_dir().join(format!(
            "bluecam-bench-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Self {
            children: (0..6).map(|_| None).collect(),
            ports,
            dir: TempDir(dir),
        };
        for i in 0..6 {
            cluster.spawn(i)?;
        }
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
            .context("cannot run redis-cli (apt-get install redis-tools)")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        cluster.wait_whole()?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let port = self.ports[i];
        let dir = self.dir.0.join(port.to_string());
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server (apt-get install redis-server)")?;
        self.children[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while cli(port, &["ping"]).trim() != "PONG" {
            if Instant::now() > deadline {
                bail!("redis-server {port} did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until every running node serves every slot and every replica is in sync.
    pub(super) fn wait_whole(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (i, &port) in self.ports.iter().enumerate() {
            if self.children[i].is_none() {
                continue;
            }
            while !cli(port, &["cluster", "info"]).contains("cluster_state:ok") || {
                let info = cli(port, &["info", "replication"]);
                info.contains("role:slave") && !info.contains("master_link_status:up")
            } {
                if Instant::now() > deadline {
                    bail!("the Redis Cluster did not become whole");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The URL the nodes are given.
    pub(super) fn url(&self) -> String {
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            self.ports[0], self.ports[1], self.ports[2]
        )
    }

    /// The ports of the masters now (those that serve slots).
    pub(super) fn masters(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for (i, &port) in self.ports.iter().enumerate() {
            if self.children[i].is_some()
                && cli(port, &["info", "replication"]).contains("role:master")
            {
                out.push(port);
            }
        }
        out
    }

    /// SIGKILLs the process on `port` (its replica takes over after the node timeout).
    pub(super) fn kill(&mut self, port: u16) {
        if let Some(i) = self.ports.iter().position(|&p| p == port)
            && let Some(mut child) = self.children[i].take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process on `port` again: it rejoins as a replica.
    pub(super) fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        let i = self
            .ports
            .iter()
            .position(|&p| p == port)
            .context("no such node")?;
        self.spawn(i)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
