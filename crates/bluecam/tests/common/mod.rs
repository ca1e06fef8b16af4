//! What the `bluecam` binary's tests share: the binary, a fresh directory, a served node.
#![allow(dead_code)]

use std::{path::PathBuf, process::Child};

pub const BIN: &str = env!("CARGO_BIN_EXE_bluecam");

/// A fresh, empty directory for `tag` (of this test process).
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bluecam-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `bluecam serve` child, killed when dropped.
pub struct Served {
    pub child: Child,
    pub url: String,
    /// What it printed at its start.
    pub lines: Vec<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
