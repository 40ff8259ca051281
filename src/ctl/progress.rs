//! Progress of fan-out work (pushes, verify, renewals): a bar on stderr when
//! it is a terminal, nothing otherwise (the commands print a plain line per
//! node for what matters).

use std::io::IsTerminal;

/// A progress bar that exists only on a terminal.
#[derive(Debug)]
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A bar for `total` steps labelled `what`, if stderr is a terminal.
    pub fn new(total: usize, what: &str) -> Self {
        let bar = (total > 1 && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(total as u64),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} nodes")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what.to_owned());
            bar
        });
        Progress { bar }
    }

    /// One step done.
    pub fn step(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
