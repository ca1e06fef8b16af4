//! `history`: what call history and webhooks cost. A join storm on a node without webhooks and
//! on one with a webhook endpoint (a receiver in this process, on loopback), the rate at which
//! that node delivers the events the storm caused, and the join latency of a cluster node on
//! PostgreSQL against a single node on SQLite (and a cluster node without a database).

use super::*;
use bluecam_server::testkit::Postgres;

/// A webhook endpoint on loopback that answers 204 to everything and notes when each event
/// came.
async fn receiver() -> anyhow::Result<(String, Arc<std::sync::Mutex<Vec<Instant>>>)> {
    let got: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let seen = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Instant::now());
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, got))
}

/// The secret the benchmark's endpoint is registered with (it does not verify: the receiver
/// is a cost, not a check).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn pick(r: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "joins_per_sec": r["joins_per_sec"],
        "join_frame_to_joined": r["join_frame_to_joined"],
        "failed": r["failed"],
    })
}

pub(super) async fn history(
    bin: &ServerBin,
    joins: usize,
    concurrency: usize,
    room_size: usize,
) -> anyhow::Result<serde_json::Value> {
    let secret = bluecam_server::auth::random_token(32);
    // 1. Webhooks off, then on (one endpoint, every event).
    progress("join storm, webhooks off");
    let off = {
        let node = cluster::start_server(bin, &secret, 0, &[], &[]).await?;
        join_storm(&node, joins, concurrency, room_size).await?
    };
    progress("join storm, webhooks on");
    let (url, got) = receiver().await?;
    let (on, delivery) = {
        let env = [
            ("BLUECAM_WEBHOOK_URL", url.as_str()),
            ("BLUECAM_WEBHOOK_SECRET", SECRET),
        ];
        let node = cluster::start_server(bin, &secret, 1, &[], &env).await?;
        let started = Instant::now();
        let on = join_storm(&node, joins, concurrency, room_size).await?;
        // The storm caused: a room.created per room, a peer.joined per join, a call.started
        // per room (and peer.left and call.ended as the storm's connections close).
        let rooms = joins.div_ceil(room_size);
        let expected = joins + 2 * rooms;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let n = got.lock().unwrap_or_else(|p| p.into_inner()).len();
            if n >= expected || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let the leaves of the storm's connections come in too, then measure the whole run.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let times = got.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (first, last) = (times.first().copied(), times.last().copied());
        let span = match (first, last) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let delivery = serde_json::json!({
            "events_delivered": times.len(),
            "events_caused_by_joins": expected,
            "seconds_from_first_to_last": span,
            "events_per_sec": if span > 0.0 { times.len() as f64 / span } else { 0.0 },
            "last_event_after_storm_start_secs": last.map(|l| l.duration_since(started).as_secs_f64()),
        });
        (on, delivery)
    };
    // 3. Join latency: a cluster node on PostgreSQL against one on Redis alone (the single
    //    node on SQLite is `off` above).
    progress("join storm, cluster node on Redis + PostgreSQL");
    let (redis, _redis_child) = cluster::start_redis()?;
    let pg = tokio::task::spawn_blocking(Postgres::start).await?;
    let postgres = {
        let args = [
            "--redis".to_owned(),
            redis,
            "--database".to_owned(),
            pg.url(),
        ];
        let node = cluster::start_server(bin, &secret, 2, &args, &[]).await?;
        join_storm(&node, joins, concurrency, room_size).await?
    };
    progress("join storm, cluster node on Redis alone");
    let (redis2, _redis2_child) = cluster::start_redis()?;
    let redis_only = {
        let args = ["--redis".to_owned(), redis2];
        let node = cluster::start_server(bin, &secret, 3, &args, &[]).await?;
        join_storm(&node, joins, concurrency, room_size).await?
    };
    Ok(serde_json::json!({
        "scenario": "history",
        "joins": joins,
        "concurrency": concurrency,
        "room_size": room_size,
        "join_storm": {
            "sqlite_webhooks_off": pick(&off),
            "sqlite_webhooks_on": pick(&on),
            "cluster_postgres": pick(&postgres),
            "cluster_redis_only": pick(&redis_only),
        },
        "webhook_delivery": delivery,
    }))
}
