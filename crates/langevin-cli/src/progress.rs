//! indicatif progress bars; when stderr is not a terminal (a log file, CI), one plain line
//! every 30 s instead (none for work that ends sooner).
use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if !io::stderr().is_terminal() {
        let lines = LogLines {
            last: Mutex::new(Instant::now()),
        };
        pb.set_draw_target(ProgressDrawTarget::term_like(Box::new(lines)));
    }
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

/// A "terminal" that writes the bar as a new stderr line every 30 s.
#[derive(Debug)]
struct LogLines {
    last: Mutex<Instant>,
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        let mut last = self.last.lock().unwrap();
        if s.trim().is_empty() || last.elapsed() < Duration::from_secs(30) {
            return Ok(());
        }
        *last = Instant::now();
        writeln!(io::stderr(), "{}", s.trim_end())
    }
    fn clear_line(&self) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        io::stderr().flush()
    }
}
