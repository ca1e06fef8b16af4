//! Progress of the timed phases of a run, on stderr: a bar (indicatif) on a terminal, a plain
//! line every 5 s otherwise (logs), nothing for phases shorter than 5 s.

use super::*;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal as _;

/// Shown while alive; cleared on drop.
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A phase of `secs` seconds; `status` says how it is going (called once per second).
pub(super) fn timed(
    label: &str,
    secs: u64,
    status: impl Fn() -> String + Send + 'static,
) -> Progress {
    if secs < 5 {
        return Progress {
            bar: None,
            task: None,
        };
    }
    let started = Instant::now();
    let label = label.to_owned();
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(secs);
        if let Ok(style) =
            ProgressStyle::with_template("bench: {prefix} [{bar:30}] {pos}/{len} s {wide_msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label);
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                shown.set_position(started.elapsed().as_secs().min(secs));
                shown.set_message(status());
            }
        });
        Progress {
            bar: Some(bar),
            task: Some(task),
        }
    } else {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let at = started.elapsed().as_secs().min(secs);
                progress(&format!("{label}: {at}/{secs} s {}", status()));
            }
        });
        Progress {
            bar: None,
            task: Some(task),
        }
    }
}
