//! Progress of long CLI work (`tgdl recover`) as a bar on stderr when it is
//! a terminal, and nothing at all when it is piped or redirected: a log file
//! or a script reading the output gets no escape codes.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::pipeline::recovery::Progress;

pub(super) struct Bar(ProgressBar);

impl Bar {
    /// A bar drawn on stderr if stderr is a terminal, else a hidden one.
    pub(super) fn on_terminal() -> Bar {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template("{msg:>18} [{bar:30}] {pos}/{len}") {
            bar.set_style(style.progress_chars("=> "));
        }
        Bar(bar)
    }
}

impl Progress for Bar {
    fn phase(&self, name: &'static str, total: u64) {
        self.0.set_message(name);
        self.0.set_length(total);
        self.0.set_position(0);
    }

    fn advance(&self) {
        self.0.inc(1);
    }

    fn finish(&self) {
        // The report follows on stdout; the bar has done its job.
        self.0.finish_and_clear();
    }
}
