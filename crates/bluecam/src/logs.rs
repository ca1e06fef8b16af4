//! The server's log: to stderr, as text (coloured only on a terminal, and never with
//! `NO_COLOR`) or as one JSON object per line (`--log-format json`). The server never waits for
//! it: lines go through a bounded buffer to a thread of their own, which drops what does not
//! fit (a reader that is slow or stopped) and what cannot be written (a closed pipe: `bluecam
//! serve | head`, a log shipper that died); both are counted in
//! `bluecam_dropped_total{reason="log_lines"}`. A write that fails never panics or blocks a
//! shutdown.

use std::{
    io::{IsTerminal as _, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log shippers.
    Json,
}

/// Lines the buffer holds for a slow reader before new ones are dropped.
const BUFFERED_LINES: usize = 16_384;

/// A writer that reports success whatever happens, counting the writes that failed.
struct Forgiving<W> {
    inner: W,
    failed: Arc<AtomicU64>,
}

impl<W: Write> Write for Forgiving<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // (The log thread writes one line per call.)
        if self.inner.write_all(buf).is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

/// Whether to colour the text: on a terminal, unless `NO_COLOR` is set (no-color.org).
fn colour(no_color: Option<std::ffi::OsString>) -> bool {
    std::io::stderr().is_terminal() && no_color.is_none_or(|v| v.is_empty())
}

/// Starts the log; keep the guard until the end (dropping it writes out what is buffered,
/// waiting at most a second for a slow reader).
pub fn init(format: LogFormat) -> WorkerGuard {
    let failed = Arc::new(AtomicU64::new(0));
    let writer = Forgiving {
        inner: std::io::stderr(),
        failed: Arc::clone(&failed),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("bluecam-log")
        .finish(writer);
    let overflowed = writer.error_counter();
    bluecam_server::metrics::count_log_drops(move || {
        failed.load(Ordering::Relaxed) + overflowed.dropped_lines() as u64
    });
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // (Its own complaints go to stderr with a panic when that fails too.)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(colour(std::env::var_os("NO_COLOR")))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_writer_is_counted_never_an_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
        }
        let failed = Arc::new(AtomicU64::new(0));
        let mut w = Forgiving {
            inner: Closed,
            failed: Arc::clone(&failed),
        };
        for _ in 0..3 {
            assert!(w.write_all(b"a line\n").is_ok());
        }
        assert!(w.flush().is_ok());
        assert_eq!(failed.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn no_colour_with_no_color_set() {
        // (stderr is not a terminal under the test runner either.)
        assert!(!colour(Some("1".into())));
    }
}
