//! `cluster`: N `serve --redis` nodes on one Redis. The same relay and join benchmarks as on
//! one node, once with every client on the first node (frames never leave it) and once with
//! the clients spread over the nodes (every frame crosses Redis), so the difference is what a
//! cross-node hop costs. With `--redis-cluster` the nodes share a Redis Cluster started here
//! instead (three masters, three replicas), and each master's load is reported.

use super::rediscluster::{RedisCluster, load_between, redis_counters};
use super::*;

/// A `redis-server` child on a free port, killed on drop (then its directory removed).
pub(super) struct RedisChild(Child, #[allow(dead_code)] TempDir);

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn start_redis() -> anyhow::Result<(String, RedisChild)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("bluecam-bench-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--loglevel", "warning"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start redis-server (apt-get install redis-server)")?;
    Ok((
        format!("redis://127.0.0.1:{port}"),
        RedisChild(child, TempDir(dir)),
    ))
}

/// Starts one node with the bench limits; waits until it is ready (Redis reachable).
async fn start_node(
    bin: &ServerBin,
    redis: &str,
    secret: &str,
    i: usize,
) -> anyhow::Result<Target> {
    start_server(
        bin,
        secret,
        i,
        &["--redis".to_owned(), redis.to_owned()],
        &[],
    )
    .await
}

/// Starts `bluecam serve` number `i` with the bench limits, more `args` and `env`; waits
/// until it is ready (its store and any Redis reachable).
pub(super) async fn start_server(
    bin: &ServerBin,
    secret: &str,
    i: usize,
    args: &[String],
    env: &[(&str, &str)],
) -> anyhow::Result<Target> {
    let dir = std::env::temp_dir().join(format!("bluecam-bench-node{i}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dir = TempDir(dir);
    std::fs::write(dir.0.join("bench.toml"), BENCH_CONFIG)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let child = Command::new(bin.path())
        .arg("serve")
        .arg("--config")
        .arg(dir.0.join("bench.toml"))
        .arg("--bind")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .args(args)
        .envs(env.iter().copied())
        .env("BLUECAM_API_SECRET", secret)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start a node")?;
    let target = Target {
        kind: TargetKind::Bluecam,
        http: format!("http://{addr}"),
        addr,
        spread: Vec::new(),
        secret: Secret::new(secret.to_owned()),
        pid: Some(child.id()),
        child: Some(child),
        _dir: Some(dir),
    };
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http
            .get(format!("{}/readyz", target.http))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(target);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("node {i} did not become ready")
}

/// A view of the first node whose clients go to `spread`.
fn via(first: &Target, spread: Vec<SocketAddr>) -> Target {
    Target {
        kind: TargetKind::Bluecam,
        http: first.http.clone(),
        addr: first.addr,
        spread,
        secret: first.secret.clone(),
        pid: first.pid,
        child: None,
        _dir: None,
    }
}

fn opts(rooms: usize, duration_secs: u64, window: u64) -> relay::RelayOpts {
    relay::RelayOpts {
        rooms,
        room_size: 2,
        duration_secs,
        payload_bytes: 64,
        window,
        rates: Vec::new(),
    }
}

fn pick(r: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "deliveries_per_sec": r["deliveries_per_sec"],
        "latency": r["latency"],
        "failed_peers": r["failed_peers"],
    })
}

/// Which measurement, on a fresh cluster each (so no detached peer of one run holds a seat
/// in the next).
#[derive(Clone, Copy)]
enum Measure {
    /// 10 rooms, one message in flight per sender: the latency of a hop with no load.
    Latency,
    RelayWindow1,
    RelayFlatOut,
    Join,
}

pub(super) async fn cluster(
    bin: &ServerBin,
    nodes: usize,
    redis: Option<String>,
    redis_cluster: bool,
    rooms: usize,
    duration_secs: u64,
    joins: usize,
) -> anyhow::Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    out.insert("scenario".into(), "cluster".into());
    out.insert(
        "redis".into(),
        if redis_cluster {
            "a Redis Cluster of 3 masters and 3 replicas".into()
        } else {
            "one Redis".into()
        },
    );
    out.insert("nodes".into(), nodes.into());
    out.insert("rooms_of_2".into(), rooms.into());
    out.insert("joins".into(), joins.into());
    for (name, spread_all) in [("same_node", false), ("cross_node", true)] {
        let mut figures = serde_json::Map::new();
        for measure in [
            Measure::Latency,
            Measure::RelayWindow1,
            Measure::RelayFlatOut,
            Measure::Join,
        ] {
            // A fresh Redis or Redis Cluster (unless one was given) and fresh nodes; the load
            // of each Redis (each master of a cluster) is read before and after.
            let (url, redis_child, redis_cluster) = match &redis {
                Some(url) => (url.clone(), None, None),
                None if redis_cluster => {
                    let c = tokio::task::spawn_blocking(RedisCluster::start).await?;
                    (c.url(), None, Some(c))
                }
                None => {
                    let (url, child) = start_redis()?;
                    (url, Some(child), None)
                }
            };
            let watched: Vec<u16> = match (&redis_cluster, &redis) {
                (Some(c), _) => c.masters(),
                (None, None) => url
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .into_iter()
                    .collect(),
                (None, Some(_)) => Vec::new(),
            };
            let secret = bluecam_server::auth::random_token(32);
            let mut targets = Vec::new();
            for i in 0..nodes {
                targets.push(start_node(bin, &url, &secret, i).await?);
            }
            let spread = if spread_all {
                targets.iter().map(|t| t.addr).collect()
            } else {
                vec![targets[0].addr]
            };
            let target = via(&targets[0], spread);
            let before: Vec<(f64, f64)> = watched.iter().map(|&p| redis_counters(p)).collect();
            let began = Instant::now();
            let (key, mut value) = match measure {
                Measure::Latency => {
                    progress(&format!("{name}: latency, 10 rooms, window 1"));
                    let r = relay_on(&target, &opts(rooms.min(10), duration_secs, 1)).await?;
                    ("latency_10_rooms", pick(&r))
                }
                Measure::RelayWindow1 => {
                    progress(&format!("{name}: relay, window 1"));
                    let r = relay_on(&target, &opts(rooms, duration_secs, 1)).await?;
                    ("relay_window_1", pick(&r))
                }
                Measure::RelayFlatOut => {
                    progress(&format!("{name}: relay, flat out"));
                    let r = relay_on(&target, &opts(rooms, duration_secs, 16)).await?;
                    ("relay_flat_out", pick(&r))
                }
                Measure::Join => {
                    progress(&format!("{name}: join storm"));
                    let r = join_storm(&target, joins, 128, 10).await?;
                    let v = serde_json::json!({
                        "joins_per_sec": r["joins_per_sec"],
                        "join_frame_to_joined": r["join_frame_to_joined"],
                        "connect_and_join": r["connect_and_join"],
                        "failed": r["failed"],
                    });
                    ("join", v)
                }
            };
            let after: Vec<(f64, f64)> = watched.iter().map(|&p| redis_counters(p)).collect();
            if !watched.is_empty()
                && let Some(v) = value.as_object_mut()
            {
                let secs = began.elapsed().as_secs_f64();
                v.insert(
                    "redis_load".into(),
                    load_between(&watched, &before, &after, secs),
                );
            }
            figures.insert(key.into(), value);
            drop(targets);
            drop(redis_child);
            drop(redis_cluster);
        }
        out.insert(name.into(), serde_json::Value::Object(figures));
    }
    Ok(serde_json::Value::Object(out))
}
