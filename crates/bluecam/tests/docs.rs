//! The docs name exactly the flags the CLI has: README's synopses of `serve` and `room create`
//! and the settings table of docs/configuration.md, against each command's `--help`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeSet, process::Command};

const BIN: &str = env!("CARGO_BIN_EXE_bluecam");

fn doc(path: &str) -> String {
    // (The crate's directory as the test runner says it is now, not as it was at build time.)
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    std::fs::read_to_string(format!("{dir}/../../{path}")).unwrap()
}

/// The long flags of a command, from its `--help` (without `--help` itself).
fn flags_of(command: &[&str]) -> BTreeSet<String> {
    let out = Command::new(BIN)
        .args(command)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix("-h, ").unwrap_or(line);
            line.strip_prefix("--").map(|rest| {
                rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .next()
                    .unwrap()
                    .to_owned()
            })
        })
        .filter(|f| f != "help")
        .collect()
}

/// Every `--flag` named in `text`.
fn flags_in(text: &str) -> BTreeSet<String> {
    text.split("--")
        .skip(1)
        .map(|rest| {
            rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .next()
                .unwrap()
                .to_owned()
        })
        // (Not a table's `|---|` line.)
        .filter(|f| f.starts_with(|c: char| c.is_ascii_alphabetic()))
        .collect()
}

/// README's synopsis of a command: from its line up to the next command's.
fn synopsis<'a>(readme: &'a str, command: &str) -> &'a str {
    let start = readme
        .find(&format!("\nbluecam {command} "))
        .unwrap_or_else(|| panic!("no synopsis of `bluecam {command}` in README.md"));
    let rest = &readme[start + 1..];
    let end = rest[1..].find("\nbluecam ").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

#[test]
fn the_readme_synopses_name_every_flag_and_no_other() {
    let readme = doc("README.md");
    let serve = flags_of(&["serve"]);
    assert_eq!(
        flags_in(synopsis(&readme, "serve")),
        serve,
        "README: bluecam serve"
    );
    // (`--server`, `--secret` and `--data-dir` of every `room` command are in the text below it.)
    let mut create = flags_of(&["room", "create"]);
    for shared in ["server", "secret", "data-dir"] {
        assert!(create.remove(shared), "{shared}");
    }
    assert_eq!(
        flags_in(synopsis(&readme, "room create")),
        create,
        "README: bluecam room create"
    );
}

#[test]
fn the_configuration_table_has_every_flag_of_serve_and_no_other() {
    let table: String = doc("docs/configuration.md")
        .lines()
        .skip_while(|l| !l.starts_with("| TOML key | flag |"))
        .take_while(|l| l.starts_with('|'))
        // The flag column.
        .filter_map(|l| l.split('|').nth(2))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!table.is_empty(), "no settings table");
    assert_eq!(flags_in(&table), flags_of(&["serve"]));
}
