//! indicatif progress bars; when stderr is not a terminal (a log file, CI), one plain line
//! every 30 s instead (none for work that ends sooner). [`Bar`] shows the library's progress
//! callbacks this way.
use std::cell::RefCell;
use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use langevin::api::Observer;

use crate::run_dir::{catch_signals, Signals};

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

/// The library's progress callbacks as a terminal bar; for training also SIGINT / SIGTERM as
/// a stop request (armed when the work starts: from then on a signal checkpoints and stops,
/// a second one ends the process at once).
pub struct Bar {
    pb: RefCell<Option<ProgressBar>>,
    catch: bool,
    signals: RefCell<Option<Signals>>,
}

impl Bar {
    /// A bar that leaves signals alone (Ctrl-C ends the process, as for any command).
    pub fn new() -> Self {
        Bar {
            pb: RefCell::new(None),
            catch: false,
            signals: RefCell::new(None),
        }
    }

    /// A bar whose work stops cleanly on SIGINT / SIGTERM (training).
    pub fn catching_signals() -> Self {
        Bar {
            catch: true,
            ..Bar::new()
        }
    }

    /// The signal that stopped the work, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.signals.borrow().as_ref().and_then(|s| s.caught())
    }
}

impl Observer for Bar {
    fn start(&self, what: &str, total: u64, done: u64) {
        if self.catch && self.signals.borrow().is_none() {
            match catch_signals() {
                Ok(s) => *self.signals.borrow_mut() = Some(s),
                Err(e) => eprintln!("warning: cannot catch signals: {e}"),
            }
        }
        let pb = bar(total, what);
        pb.set_position(done);
        *self.pb.borrow_mut() = Some(pb);
    }
    fn advance(&self, done: u64, message: Option<&str>) {
        if let Some(pb) = &*self.pb.borrow() {
            pb.set_position(done);
            if let Some(m) = message {
                pb.set_message(m.to_string());
            }
        }
    }
    fn finish(&self) {
        if let Some(pb) = self.pb.borrow_mut().take() {
            pb.finish_and_clear();
        }
    }
    fn note(&self, text: &str) {
        match &*self.pb.borrow() {
            Some(pb) => pb.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }
    fn should_stop(&self) -> bool {
        self.signal().is_some()
    }
}
