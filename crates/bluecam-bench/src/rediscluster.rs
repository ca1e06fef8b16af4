//! The load of each Redis a benchmark runs on (commands processed and CPU seconds, from
//! `INFO`); the Redis Cluster itself is `bluecam_server::testkit::RedisCluster`.

pub(super) use bluecam_server::testkit::{RedisCluster, redis_cli};

/// A field of `INFO`'s answer.
fn info_field(info: &str, name: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// What a Redis process has done so far: commands processed and CPU seconds (user + system).
pub(super) fn redis_counters(port: u16) -> (f64, f64) {
    let info = redis_cli(port, &["info"]);
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
