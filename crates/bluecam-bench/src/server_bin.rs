//! Which `bluecam` binary the bench starts its servers from: `--bluecam PATH` or
//! `BLUECAM_BIN`, else the `bluecam` next to this executable (where `cargo build` puts both).
//! The bench's own worker processes (`idle-worker`, `baseline-server`) are this executable.

use anyhow::bail;
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
};

/// The `bluecam` executable, found on disk before anything is started.
#[derive(Debug, Clone)]
pub(crate) struct ServerBin(PathBuf);

impl ServerBin {
    /// `explicit` (the flag or the variable) if given: a path, or a bare name looked up on
    /// `PATH`; otherwise `bluecam` beside the running bench.
    pub(crate) fn find(explicit: Option<&Path>) -> anyhow::Result<Self> {
        let path = match explicit {
            // A name alone, as a shell would take it.
            Some(path) if path.parent() == Some(Path::new("")) => match on_path(path.as_os_str()) {
                Some(found) => found,
                None => bail!(
                    "the bluecam binary {:?} (--bluecam / BLUECAM_BIN) is not on PATH",
                    path
                ),
            },
            Some(path) => path.to_owned(),
            None => std::env::current_exe()?.with_file_name("bluecam"),
        };
        if path.is_file() {
            return Ok(Self(path));
        }
        match explicit {
            Some(_) => bail!(
                "the bluecam binary {} (--bluecam / BLUECAM_BIN) does not exist",
                path.display()
            ),
            None => bail!(
                "no bluecam binary at {}: build it beside bluecam-bench (`cargo build --release \
                 -p bluecam -p bluecam-bench`), or pass --bluecam PATH (or set BLUECAM_BIN)",
                path.display()
            ),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

fn on_path(name: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
