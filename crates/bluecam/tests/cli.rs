//! The `bluecam` binary end to end: `serve` (first start, secret file, SIGTERM), `room` and
//! `token`. (The smoke runs of every benchmark scenario are `bluecam-bench`'s tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

mod common;
use common::{BIN, Served, temp_dir};

/// Starts `bluecam serve` on a port of its choosing (port 0: no port picked here and handed
/// over, which another process could take first) and reads what it prints until the metrics
/// line; the address comes from the first line.
fn serve(dir: &Path) -> Served {
    serve_with(dir, &[])
}

/// [`serve`] with these environment variables.
fn serve_with(dir: &Path, vars: &[(&str, &str)]) -> Served {
    let mut child = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove("BLUECAM_API_SECRET")
        .envs(vars.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        lines.push(line.trim_end().to_owned());
        // (The last line before the cluster's, after the secret's and the demo's.)
        if line.starts_with("Metrics:") {
            break;
        }
        line.clear();
    }
    let url = lines
        .first()
        .and_then(|l| l.strip_prefix("BlueCam is listening on "))
        .unwrap_or_else(|| panic!("no address in {lines:?}"))
        .to_owned();
    Served { child, url, lines }
}

fn bluecam(args: &[&str], dir: &Path, url: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--server", url, "--data-dir"])
        .arg(dir)
        .env_remove("BLUECAM_API_SECRET")
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn serve_room_token_and_graceful_shutdown() {
    let dir = temp_dir("serve");
    let served = serve(&dir);
    assert!(served.lines[0].contains(&served.url), "{:?}", served.lines);
    assert!(
        served
            .lines
            .iter()
            .any(|l| l.starts_with("Generated an API secret"))
    );
    let secret_file = dir.join("api-secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let secret = std::fs::read_to_string(&secret_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        served.lines.iter().any(|l| l.contains(&secret)),
        "the new secret is printed once"
    );

    let url = served.url.clone();
    let room = json_of(&bluecam(
        &[
            "room", "create", "--name", "Demo", "--member", "bob", "--owner", "alice",
        ],
        &dir,
        &url,
    ));
    let id = room["id"].as_str().unwrap().to_owned();
    assert_eq!(room["name"], "Demo");
    assert_eq!(room["multipleSessions"], false);
    let several = json_of(&bluecam(
        &["room", "create", "--multiple-sessions"],
        &dir,
        &url,
    ));
    assert_eq!(several["multipleSessions"], true, "{several}");
    let changed = json_of(&bluecam(
        &[
            "room",
            "update",
            &id,
            "--name",
            "Renamed",
            "--max-peers",
            "3",
            "--no-members",
        ],
        &dir,
        &url,
    ));
    assert_eq!(
        (&changed["name"], &changed["maxPeers"], &changed["members"]),
        (
            &serde_json::json!("Renamed"),
            &serde_json::json!(3),
            &Value::Null
        ),
        "{changed}"
    );
    // (The rest of this test knows the room by its member bob.)
    json_of(&bluecam(
        &["room", "update", &id, "--member", "bob"],
        &dir,
        &url,
    ));
    let list = json_of(&bluecam(&["room", "list", "--member", "bob"], &dir, &url));
    assert_eq!(list["rooms"][0]["id"], id.as_str());
    let owned = json_of(&bluecam(&["room", "list", "--owner", "alice"], &dir, &url));
    assert_eq!(owned["rooms"][0]["id"], id.as_str());
    let none = json_of(&bluecam(&["room", "list", "--owner", "bob"], &dir, &url));
    assert_eq!(none["rooms"], serde_json::json!([]));
    let got = json_of(&bluecam(&["room", "get", &id], &dir, &url));
    assert_eq!(got["id"], id.as_str());
    // Peers (none yet), and removing one that is not there (the removal itself is tested in
    // bluecam-server's tests).
    let peers = json_of(&bluecam(&["room", "peers", &id], &dir, &url));
    assert_eq!(peers, serde_json::json!({"peers": []}));
    let sent = json_of(&bluecam(
        &[
            "room",
            "send",
            &id,
            "--type",
            "notice",
            "--data",
            r#"{"a":1}"#,
        ],
        &dir,
        &url,
    ));
    assert_eq!(
        sent,
        serde_json::json!({"sent": [], "unreachable": []}),
        "{sent}"
    );
    let kick = bluecam(&["room", "kick", &id, "nobody"], &dir, &url);
    assert!(!kick.status.success());
    assert!(
        String::from_utf8_lossy(&kick.stderr).contains("unknown_peer"),
        "{}",
        String::from_utf8_lossy(&kick.stderr)
    );
    // Call history and usage (the calls themselves are tested in bluecam-server's tests).
    let calls = json_of(&bluecam(&["calls", &id], &dir, &url));
    assert_eq!(calls, serde_json::json!({"calls": []}));
    let usage = json_of(&bluecam(
        &["usage", "--from", "0", "--owner", "alice"],
        &dir,
        &url,
    ));
    assert_eq!(
        (usage["calls"].as_u64(), usage["from"].as_u64()),
        (Some(0), Some(0)),
        "{usage}"
    );
    assert!(
        usage["to"].as_u64().unwrap() > 1_700_000_000,
        "--to defaults to now: {usage}"
    );
    let missing = Command::new(BIN)
        .args(["calls", "no-such-room", "--server", &url, "--data-dir"])
        .arg(&dir)
        .env_remove("BLUECAM_API_SECRET")
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("room_not_found"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    let token = Command::new(BIN)
        .args([
            "token",
            "--room",
            &id,
            "--identity",
            "bob",
            "--ttl",
            "60",
            "--data-dir",
        ])
        .arg(&dir)
        .env_remove("BLUECAM_API_SECRET")
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3, "a JWT alone on stdout");
    join_with(&served.url, token.trim());

    let deleted = bluecam(&["room", "delete", &id], &dir, &url);
    assert!(deleted.status.success());
    let missing = bluecam(&["room", "get", &id], &dir, &url);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("room_not_found"));

    let wrong = Command::new(BIN)
        .args(["room", "list", "--server", &url, "--secret", "wrong"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("unauthorized"));

    // SIGTERM: the server exits cleanly and quickly.
    let mut served = served;
    terminate(&mut served.child);
    // A second start reads the same secret back and prints no secret.
    let again = serve(&dir);
    assert!(again.lines.iter().all(|l| !l.contains(&secret)));
    drop(again);
    std::fs::remove_dir_all(dir).unwrap();
}

fn join_with(url: &str, token: &str) {
    let v = join_answer(url, token);
    assert_eq!(v["op"], "joined", "{v}");
    assert_eq!(v["self"]["identity"], "bob");
}

/// Joins over a WebSocket; the server's first frame.
fn join_answer(url: &str, token: &str) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures_util::{SinkExt as _, StreamExt as _};
        let ws_url = format!("{}/v1/ws", url.replace("http://", "ws://"));
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        let join = serde_json::json!({"op": "join", "token": token}).to_string();
        ws.send(tokio_tungstenite::tungstenite::Message::text(join))
            .await
            .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        serde_json::from_str(msg.to_text().unwrap()).unwrap()
    })
}

/// `BLUECAM_DEMO=false` turns the demo off as `--no-demo` does (it used to mean only "not
/// `--demo`", which left the default demo on).
#[test]
fn the_demo_is_off_with_demo_false() {
    for (tag, vars) in [
        ("demo-false", &[("BLUECAM_DEMO", "false")][..]),
        ("demo-no", &[("BLUECAM_NO_DEMO", "true")][..]),
        ("demo-default", &[][..]),
    ] {
        let dir = temp_dir(tag);
        let served = serve_with(&dir, vars);
        let demo = served.lines.iter().find(|l| l.starts_with("Demo:"));
        if vars.is_empty() {
            assert!(
                demo.is_some_and(|l| l.starts_with("Demo: open")),
                "{:?}",
                served.lines
            );
        } else {
            assert_eq!(demo.map(String::as_str), Some("Demo: off"), "{tag}");
        }
        drop(served);
        std::fs::remove_dir_all(dir).unwrap();
    }
    let out = Command::new(BIN)
        .args(["serve", "--demo=false", "--no-demo"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "both at once is a usage error");
}

#[test]
fn every_setting_can_come_from_the_environment() {
    let dir = temp_dir("env");
    let served = serve_with(
        &dir,
        &[
            (
                "BLUECAM_ICE_SERVERS",
                r#"[{"urls":["stun:stun.example.com:3478"]}]"#,
            ),
            ("BLUECAM_TURN_URLS", "turn:turn.example.com:3478"),
            ("BLUECAM_TURN_SECRET", "coturn-secret"),
            ("BLUECAM_LIMITS_MAX_PEERS_PER_ROOM", "1"),
            ("BLUECAM_NO_STUN", "true"),
        ],
    );
    let url = served.url.clone();
    let room = json_of(&bluecam(&["room", "create"], &dir, &url));
    assert_eq!(room["maxPeers"], 1, "{room}");
    let id = room["id"].as_str().unwrap();
    let token = |who: &str| {
        let out = Command::new(BIN)
            .args(["token", "--room", id, "--identity", who, "--data-dir"])
            .arg(&dir)
            .env_remove("BLUECAM_API_SECRET")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let joined = join_answer(&url, &token("bob"));
    assert_eq!(joined["op"], "joined", "{joined}");
    let ice = joined["iceServers"].as_array().unwrap();
    assert_eq!(
        ice.len(),
        2,
        "configured STUN, then TURN, no built-in STUN: {ice:?}"
    );
    assert_eq!(ice[0]["urls"][0], "stun:stun.example.com:3478");
    assert_eq!(ice[1]["urls"][0], "turn:turn.example.com:3478");
    assert!(
        ice[1]["username"]
            .as_str()
            .unwrap()
            .ends_with(joined["self"]["id"].as_str().unwrap())
    );
    drop(served);

    // A variable that cannot be read stops the start, naming it.
    let out = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("BLUECAM_LIMITS_MAX_FRAME_BYTES", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BLUECAM_LIMITS_MAX_FRAME_BYTES"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `bluecam serve` with stdout and stderr piped to this test; stdout read up to its metrics
/// line.
fn serve_logged(dir: &Path, args: &[&str]) -> (Child, BufReader<std::process::ChildStderr>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env_remove("BLUECAM_API_SECRET")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.starts_with("Metrics:") {
        line.clear();
    }
    let err = BufReader::new(child.stderr.take().unwrap());
    (child, err)
}

/// Sends SIGTERM and waits (at most 30 s) for a clean exit.
fn terminate(child: &mut Child) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("no exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The log on a pipe: plain text (no colour codes), or JSON lines with `--log-format json`.
#[test]
fn the_log_on_a_pipe_is_plain_text_or_json_lines() {
    for (tag, args) in [
        ("log-text", &[][..]),
        ("log-json", &["--log-format", "json"][..]),
    ] {
        let dir = temp_dir(tag);
        let (mut child, mut err) = serve_logged(&dir, args);
        // A fresh data dir: the schema's migrations are logged at info.
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(
            !line.contains('\u{1b}'),
            "{tag}: colour codes on a pipe: {line:?}"
        );
        if tag == "log-json" {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(v["level"], "INFO", "{v}");
            assert!(v["fields"].is_object(), "{v}");
        } else {
            assert!(line.contains("INFO"), "{line}");
        }
        terminate(&mut child);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// A log whose reader went away (`bluecam serve 2>&1 | head`, a log shipper that died) does not
/// stop the server from shutting down; the lines it could not write are counted.
#[test]
fn a_closed_log_pipe_neither_blocks_nor_stops_the_shutdown() {
    let dir = temp_dir("log-closed");
    let (mut child, err) = serve_logged(&dir, &[]);
    drop(err);
    // A line to write into the closed pipe: the shutdown's own, at info (its write used to
    // panic the task that handles the signal, and the server never stopped).
    terminate(&mut child);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `--history-retention-days` takes a positive whole number only.
#[test]
fn a_retention_that_is_not_a_positive_number_stops_the_start() {
    for bad in ["0", "-1", "1.5", "x"] {
        let out = Command::new(BIN)
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--history-retention-days",
                bad,
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--history-retention-days") || err.contains(&format!("'{bad}'")),
            "{bad}: {err}"
        );
    }
}
