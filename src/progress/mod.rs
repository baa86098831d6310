//! Progress events. Library code emits [`Event`]s through a [`Reporter`];
//! the binary decides how they look: bars on a terminal, plain lines
//! otherwise, nothing with `--quiet`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone)]
pub enum Event {
    /// A step begins or ends (`merging layer 2/3 sha256:…`): one line.
    Stage { message: String },
    /// A measurable task begins: a bar on a terminal.
    Start {
        id: String,
        label: String,
        total: u64,
    },
    /// The task `id` has done `done` of its total.
    Advance { id: String, done: u64 },
    /// The task `id` ended; `message`, if any, is shown as a line.
    Finish { id: String, message: Option<String> },
}

pub trait Reporter: Sync {
    fn event(&self, e: Event);
}

/// A measurable task shown as a bar: [`Event::Start`] when it begins,
/// [`Event::Finish`] when it is dropped (finished or not).
pub struct Task<'a> {
    reporter: &'a dyn Reporter,
    id: String,
    total: u64,
}

impl<'a> Task<'a> {
    pub fn start(reporter: &'a dyn Reporter, id: &str, label: String, total: u64) -> Self {
        reporter.event(Event::Start {
            id: id.to_string(),
            label,
            total,
        });
        Task {
            reporter,
            id: id.to_string(),
            total,
        }
    }

    /// `done` of the task's total are done.
    pub fn advance(&self, done: u64) {
        self.reporter.event(Event::Advance {
            id: self.id.clone(),
            done,
        });
    }

    /// `done` of `of` units are done, scaled to the task's total.
    pub fn advance_fraction(&self, done: u64, of: u64) {
        let scaled = (self.total as u128 * done as u128 / of.max(1) as u128) as u64;
        self.advance(scaled.min(self.total));
    }
}

impl Drop for Task<'_> {
    fn drop(&mut self) {
        self.reporter.event(Event::Finish {
            id: std::mem::take(&mut self.id),
            message: None,
        });
    }
}

/// Drops every event.
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: Event) {}
}

enum Mode {
    Quiet,
    Plain,
    Bars {
        multi: MultiProgress,
        bars: Mutex<HashMap<String, ProgressBar>>,
    },
}

/// Shows events on stderr.
pub struct Console {
    mode: Mode,
    start: Instant,
}

impl Console {
    /// A writer for log lines (`tracing`) that prints them above the bars
    /// instead of through them.
    pub fn log_writer(&self) -> LogWriter {
        match &self.mode {
            Mode::Bars { multi, .. } => LogWriter(Some(multi.clone())),
            _ => LogWriter(None),
        }
    }

    pub fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Mutex::new(HashMap::new()),
            }
        } else {
            Mode::Plain
        };
        Console {
            mode,
            start: Instant::now(),
        }
    }

    fn line(&self, msg: &str) {
        let t = self.start.elapsed().as_secs_f64();
        match &self.mode {
            Mode::Quiet => {}
            Mode::Plain => eprintln!("[{t:6.2}s] {msg}"),
            Mode::Bars { multi, .. } => {
                let _ = multi.println(format!("[{t:6.2}s] {msg}"));
            }
        }
    }
}

/// Writes to stderr, above the progress bars when there are any.
#[derive(Clone)]
pub struct LogWriter(Option<MultiProgress>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.0 {
            Some(multi) => multi.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}

/// The first 12 hex digits of a digest, or the last component of a path,
/// for progress lines.
pub fn short(id: &str) -> &str {
    match id.strip_prefix("sha256:") {
        Some(hex) => &hex[..hex.len().min(12)],
        None => id.rsplit('/').next().unwrap_or(id),
    }
}

impl Reporter for Console {
    fn event(&self, e: Event) {
        match (&self.mode, e) {
            (Mode::Quiet, _) => {}
            (_, Event::Stage { message }) => self.line(&message),
            (Mode::Plain, Event::Start { .. } | Event::Advance { .. }) => {}
            (Mode::Plain, Event::Finish { message, .. }) => {
                if let Some(m) = message {
                    self.line(&m)
                }
            }
            (Mode::Bars { multi, bars }, Event::Start { id, label, total }) => {
                let bar = multi.add(ProgressBar::new(total));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(label);
                bars.lock().expect("bars poisoned").insert(id, bar);
            }
            (Mode::Bars { bars, .. }, Event::Advance { id, done }) => {
                if let Some(b) = bars.lock().expect("bars poisoned").get(&id) {
                    b.set_position(done);
                }
            }
            (Mode::Bars { bars, .. }, Event::Finish { id, message }) => {
                if let Some(b) = bars.lock().expect("bars poisoned").remove(&id) {
                    b.finish_and_clear();
                }
                if let Some(m) = message {
                    self.line(&m)
                }
            }
        }
    }
}
