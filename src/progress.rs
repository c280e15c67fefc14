//! Progress bars for the long commands (`seed`, `replay`, `run --until-empty`): count, rate and ETA
//! on a terminal; nothing at all when stderr is a pipe or a CI log (indicatif hides itself there).

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::counters::Stats;

/// A bar of `len` items labelled `what`.
pub fn bar(len: u64, what: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg:>10} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {per_sec} eta {eta}",
    )
    .expect("the template is valid")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what);
    bar
}

/// Moves `bar` along with the pipeline's received count until the returned task is aborted.
pub fn follow(stats: Arc<Stats>, bar: ProgressBar) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let received = stats.report().received;
            if received > bar.length().unwrap_or(0) {
                // More arrived than the queue held at the start.
                bar.set_length(received);
            }
            bar.set_position(received);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}
