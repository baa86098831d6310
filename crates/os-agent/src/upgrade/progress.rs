//! How `upgrade` tells what it does: with `--json`, one JSON object per
//! line on stdout (`event` `step`, `progress` or `result`, documented in
//! docs/os-agent.md); otherwise step lines on stderr, a progress line
//! rewritten in place when stderr is a terminal, and the result on
//! stdout.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::state::API_VERSION;

pub struct Reporter {
    json: bool,
    tty: bool,
    last: Option<Instant>,
    started: Instant,
    /// A progress line is on the terminal (ends without a newline).
    open_line: bool,
}

impl Reporter {
    pub fn new(json: bool) -> Reporter {
        Reporter {
            json,
            tty: std::io::stderr().is_terminal(),
            last: None,
            started: Instant::now(),
            open_line: false,
        }
    }

    fn emit(&mut self, v: serde_json::Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    fn close_line(&mut self) {
        if self.open_line {
            eprintln!();
            self.open_line = false;
        }
    }

    /// A step: `phase` is a fixed word (`resolve`, `preflight`, `rootfs`,
    /// `verify`, `boot-files`, `record`, `arm`, `reboot`).
    pub fn step(&mut self, phase: &str, message: &str) {
        if self.json {
            self.emit(json!({
                "apiVersion": API_VERSION,
                "event": "step",
                "phase": phase,
                "message": message,
            }));
        } else {
            self.close_line();
            eprintln!("os-agent: {message}");
        }
    }

    /// Bytes of `phase` done out of `total`; at most about once a second
    /// (and at the end).
    pub fn bytes(&mut self, phase: &str, done: u64, total: u64) {
        let now = Instant::now();
        let due = self
            .last
            .is_none_or(|l| now.duration_since(l) >= Duration::from_secs(1));
        if !due && done < total {
            return;
        }
        self.last = Some(now);
        if self.json {
            self.emit(json!({
                "apiVersion": API_VERSION,
                "event": "progress",
                "phase": phase,
                "done": done,
                "total": total,
            }));
        } else if self.tty {
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            eprint!(
                "\r\x1b[Kos-agent: {phase}: {} / {} MiB ({pct}%, {:.1} MiB/s)",
                done >> 20,
                total >> 20,
                done as f64 / secs / 1048576.0
            );
            self.open_line = true;
            if done >= total {
                self.close_line();
            }
        }
    }

    /// Starts timing a transfer (the rate on the progress line).
    pub fn restart_clock(&mut self) {
        self.started = Instant::now();
        self.last = None;
    }

    /// The final outcome: one JSON line, or one line on stdout.
    pub fn result(&mut self, v: serde_json::Value, line: &str) {
        self.close_line();
        if self.json {
            let mut v = v;
            v["apiVersion"] = json!(API_VERSION);
            v["event"] = json!("result");
            self.emit(v);
        } else {
            println!("{line}");
        }
    }
}
