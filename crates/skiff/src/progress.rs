//! Pull/push progress: bars on a terminal, nothing otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use skiff_image::progress::Progress;

pub struct TermProgress {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl TermProgress {
    pub fn new(quiet: bool) -> TermProgress {
        let multi = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        TermProgress {
            multi,
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Progress for TermProgress {
    fn begin(&self, id: &str, label: &str, total: Option<u64>) {
        let Some(multi) = &self.multi else { return };
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{prefix:>14} {msg:<12} [{bar:30}] {bytes}/{total_bytes}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner(),
        };
        let bar = multi.add(
            bar.with_prefix(id.to_string())
                .with_message(label.to_string()),
        );
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(id.to_string(), bar);
        }
    }

    fn advance(&self, id: &str, bytes: u64) {
        if let Ok(bars) = self.bars.lock() {
            if let Some(b) = bars.get(id) {
                b.inc(bytes);
            }
        }
    }

    fn end(&self, id: &str, outcome: &str) {
        if let Ok(mut bars) = self.bars.lock() {
            if let Some(b) = bars.remove(id) {
                b.finish_with_message(outcome.to_string());
            }
        }
    }
}
