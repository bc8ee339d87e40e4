//! indicatif progress bars, hidden when stderr is not a terminal.
use indicatif::{ProgressBar, ProgressStyle};

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}
