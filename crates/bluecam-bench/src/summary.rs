//! Ratios to the baseline, and the human summary printed on stderr after the JSON.

use serde_json::Value;
use std::fmt::Write as _;

/// `a / b` where both are numbers and `b` is positive.
fn ratio(a: &Value, b: &Value) -> Value {
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => serde_json::json!(a / b),
        _ => Value::Null,
    }
}

/// BlueCam's figures divided by the baseline's, for the scenarios that run both
/// (throughput: higher is better; latency and CPU: lower is better).
pub(super) fn ratios(ours: &Value, base: &Value) -> Value {
    match ours["scenario"].as_str() {
        Some("relay") => super::relay::ratios(ours, base),
        Some("signal") => serde_json::json!({
            "signals_per_sec": ratio(&ours["signals_per_sec"], &base["signals_per_sec"]),
            "hop_p50": ratio(&ours["hop"]["p50_ms"], &base["hop"]["p50_ms"]),
            "hop_p99": ratio(&ours["hop"]["p99_ms"], &base["hop"]["p99_ms"]),
            "exchange_p50": ratio(&ours["exchange"]["p50_ms"], &base["exchange"]["p50_ms"]),
            "exchange_p99": ratio(&ours["exchange"]["p99_ms"], &base["exchange"]["p99_ms"]),
        }),
        Some("join-storm") => serde_json::json!({
            "joins_per_sec": ratio(&ours["joins_per_sec"], &base["joins_per_sec"]),
            "connect_and_join_p50": ratio(&ours["connect_and_join"]["p50_ms"], &base["connect_and_join"]["p50_ms"]),
            "connect_and_join_p99": ratio(&ours["connect_and_join"]["p99_ms"], &base["connect_and_join"]["p99_ms"]),
            "server_cpu_us_per_join": ratio(&ours["server_cpu_us_per_join"], &base["server_cpu_us_per_join"]),
        }),
        _ => Value::Null,
    }
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

fn lat(v: &Value) -> String {
    format!(
        "p50 {} / p99 {} / p99.9 {} ms",
        num(&v["p50_ms"], 2),
        num(&v["p99_ms"], 2),
        num(&v["p999_ms"], 2)
    )
}

fn relay_line(v: &Value) -> String {
    let offered = v["offered_deliveries_per_sec"]
        .as_f64()
        .map_or_else(|| "flat out".to_owned(), |o| format!("{o:.0} offered"));
    format!(
        "{offered}: {} deliveries/s, {}, server CPU {} s per million deliveries ({} deliveries per server CPU-second)",
        num(&v["deliveries_per_sec"], 0),
        lat(&v["latency"]),
        num(&v["server_cpu_secs_per_million_deliveries"], 2),
        num(&v["deliveries_per_server_cpu_sec"], 0),
    )
}

fn scenario_lines(v: &Value, out: &mut String) {
    let name = v["target"].as_str().unwrap_or("bluecam");
    match v["scenario"].as_str().unwrap_or_default() {
        "relay" => match v["points"].as_array() {
            Some(points) => {
                for p in points {
                    let _ = writeln!(out, "  {name}: {}", relay_line(p));
                }
            }
            None => {
                let _ = writeln!(out, "  {name}: {}", relay_line(v));
            }
        },
        "signal" => {
            let _ = writeln!(
                out,
                "  {name}: hop {}; exchange {}; {} signals/s",
                lat(&v["hop"]),
                lat(&v["exchange"]),
                num(&v["signals_per_sec"], 0)
            );
        }
        "stun" => {
            let _ = writeln!(
                out,
                "  {name}: {} STUN answers/s ({} per server CPU-second), {} unanswered",
                num(&v["answers_per_sec"], 0),
                num(&v["answers_per_server_cpu_sec"], 0),
                num(&v["unanswered"], 0)
            );
        }
        "join-storm" => {
            let _ = writeln!(
                out,
                "  {name}: {} joins/s; connect + join {}; server CPU {} us per join",
                num(&v["joins_per_sec"], 0),
                lat(&v["connect_and_join"]),
                num(&v["server_cpu_us_per_join"], 0)
            );
        }
        "idle" => {
            let _ = writeln!(
                out,
                "  {name}: {} connections held; {} bytes of server RSS per connection; idle CPU {} %",
                v["connections_held"],
                num(&v["server_rss_per_connection_bytes"], 0),
                num(&v["server_idle_cpu_percent"], 2)
            );
        }
        "slow-reader" => {
            let _ = writeln!(
                out,
                "  {name}: slow peer disconnected after {} s; server RSS {} -> {} KiB at most; others' p99 {} -> {} ms ({:+.0} %)",
                num(&v["slow_peer_disconnected_after_secs"], 1),
                v["server_rss_before_kib"],
                v["server_rss_max_during_kib"],
                num(&v["others_before"]["p99_ms"], 2),
                num(&v["others_after"]["p99_ms"], 2),
                v["others_p99_change"].as_f64().unwrap_or(0.0) * 100.0
            );
        }
        "soak" => {
            let r = &v["relay"];
            let h = &v["hostile"];
            let _ = writeln!(
                out,
                "  {name}: {:.1} min; {} connections replaced; relay {} sent, {} delivered, {} out of order, {} dropped",
                v["minutes"].as_f64().unwrap_or(0.0),
                v["replaced"],
                r["sent"],
                r["delivered"],
                r["out_of_order"],
                r["dropped_connections"]
            );
            let _ = writeln!(
                out,
                "  hostile clients: {} of {} closed as documented; slow readers cut: {} of {} ({} saw 4030); slowloris cut: {} of {}",
                h["closed_as_documented"],
                h["runs"],
                h["slow_readers_cut"],
                h["slow_readers"],
                h["slow_readers_saw_4030"],
                h["slowloris_cut"],
                h["slowloris"]
            );
            let (rss, files) = (&v["rss_kib"], &v["open_files"]);
            let _ = writeln!(
                out,
                "  server RSS {} KiB at a third, {} KiB at the end (max {}); open files {} at a third, {} at the end (max {})",
                rss["at_one_third"],
                rss["last"],
                rss["max"],
                files["at_one_third"],
                files["last"],
                files["max"]
            );
        }
        "churn" => {
            let _ = writeln!(out, "  {name}: {} connections replaced", v["replaced"]);
            for sample in v["samples"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "    t {:>4} s: {} open files, RSS {} KiB",
                    sample["t"], sample["open_files"], sample["rss_kib"]
                );
            }
        }
        _ => {}
    }
}

/// A few lines a person reads: the figures, the baseline's, and the ratios.
pub(super) fn human(result: &Value) -> String {
    let mut out = String::new();
    let m = &result["machine"];
    let _ = writeln!(
        out,
        "== bench {} ({} cores, {})",
        result["scenario"].as_str().unwrap_or_default(),
        m["cpus"],
        if m["pinned"] == true {
            "server pinned to core 0, generator to core 1"
        } else {
            "not pinned"
        }
    );
    let mut scenario = |v: &Value| {
        let mut v = v.clone();
        v["scenario"] = result["scenario"].clone();
        scenario_lines(&v, &mut out);
    };
    scenario(result);
    if result["baseline"].is_object() {
        scenario(&result["baseline"]);
    }
    let ratios = &result["vs_baseline"];
    let mut line = |r: &Value| {
        if let Some(obj) = r.as_object() {
            let parts: Vec<String> = obj
                .iter()
                .map(|(k, v)| format!("{k} {}", num(v, 2)))
                .collect();
            let _ = writeln!(out, "  ratio to baseline: {}", parts.join(", "));
        }
    };
    match ratios {
        Value::Array(points) => points.iter().for_each(&mut line),
        other => line(other),
    }
    if let Some(plot) = result["plot"].as_str() {
        let _ = writeln!(out, "  plot: {plot}");
    }
    out
}
