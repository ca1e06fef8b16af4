//! What operators deploy with (`deploy/`) stays true to the server: the systemd unit verifies,
//! the container files and the unit use only documented settings, and the dashboard and the
//! alert rules use only metrics the server exports and the docs list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

const BIN: &str = env!("CARGO_BIN_EXE_bluecam");

fn root() -> PathBuf {
    // The crate's directory as the test runner says it is now, not as it was at build time (a
    // binary built in another clone sharing the target directory would look there).
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    Path::new(&dir).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every word of `text` that starts with `prefix` and goes on with `[A-Za-z0-9_]`.
fn words(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let word: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // (Not the middle of a longer word.)
        let before = rest[..i].chars().next_back();
        if word.len() > prefix.len()
            && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.insert(word.clone());
        }
        rest = &rest[i + prefix.len()..];
    }
    out
}

#[test]
fn the_systemd_unit_verifies() {
    // (Offline: the unit as installed, pointing at this build's binary.)
    let dir = std::env::temp_dir().join(format!("bluecam-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("bluecam.service");
    std::fs::write(
        &unit,
        read("deploy/bluecam.service").replace("/usr/local/bin/bluecam", BIN),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd) runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_deploy_files_set_only_documented_settings() {
    let table: String = read("docs/configuration.md")
        .lines()
        .skip_while(|l| !l.starts_with("| TOML key | flag |"))
        .take_while(|l| l.starts_with('|'))
        .collect::<Vec<_>>()
        .join("\n");
    let documented = words(&table, "BLUECAM_");
    for file in [
        "deploy/Dockerfile",
        "deploy/compose.yaml",
        "deploy/bluecam.service",
    ] {
        let used = words(&read(file), "BLUECAM_");
        assert!(!used.is_empty(), "{file}");
        let unknown: Vec<_> = used.difference(&documented).collect();
        assert!(
            unknown.is_empty(),
            "{file} sets {unknown:?}, which docs/configuration.md does not list"
        );
    }
}

#[test]
fn the_dashboard_and_the_alerts_use_only_exported_and_documented_metrics() {
    let mut source = String::new();
    let mut dirs = vec![root().join("crates/bluecam-server/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    // The names the server registers, as string literals in its code.
    let exported = words(&source.replace('"', " \" "), "bluecam_");
    let documented = words(&read("docs/configuration.md"), "bluecam_");
    for file in [
        "deploy/grafana/bluecam.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let used = words(&read(file), "bluecam_");
        assert!(used.len() >= 5, "{file}: {used:?}");
        let missing: Vec<_> = used
            .iter()
            .filter(|m| !exported.contains(*m) || !documented.contains(*m))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} uses {missing:?}: not exported, or not documented"
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/bluecam.json")).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
}
