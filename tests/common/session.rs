//! A QEMU machine that keeps running across its own reboots while a test
//! talks to it: the console is collected in the background, and the test
//! waits for the next line that matters (a boot line, a fault point) from
//! where it last looked. For chains of upgrades, power cuts and rollbacks
//! that share one machine instead of booting one per case.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::qemu::{tail, Vm};
use super::require_tool;

pub struct Session {
    child: Child,
    console: Arc<Mutex<Vec<u8>>>,
    /// Where the next [`Session::wait_for`] starts looking.
    pub mark: usize,
    pub name: String,
}

impl Session {
    /// Starts `vm` (which should allow reboots) in the background.
    pub fn start(vm: &Vm, name: &str) -> Session {
        let (qemu, args) = vm.command_line();
        require_tool(
            qemu,
            "qemu-system-x86 / qemu-system-arm (from bookworm-backports)",
        );
        let mut child = Command::new(qemu)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let console = Arc::new(Mutex::new(Vec::new()));
        for mut stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let c = console.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    c.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        Session {
            child,
            console,
            mark: 0,
            name: name.into(),
        }
    }

    /// The whole console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap()).into_owned()
    }

    /// The console from the mark on.
    pub fn since_mark(&self) -> String {
        let c = self.console.lock().unwrap();
        String::from_utf8_lossy(&c[self.mark.min(c.len())..]).into_owned()
    }

    /// Waits for the first complete line containing `needle` after the
    /// mark; moves the mark past it and returns the line. Err (with the
    /// console's tail) on timeout or when QEMU exits.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let start = Instant::now();
        loop {
            {
                let c = self.console.lock().unwrap();
                let from = self.mark.min(c.len());
                let text = String::from_utf8_lossy(&c[from..]);
                if let Some(i) = text.find(needle) {
                    let line_start = text[..i].rfind('\n').map(|j| j + 1).unwrap_or(0);
                    if let Some(end) = text[i..].find('\n') {
                        let line = text[line_start..i + end].trim_end_matches('\r').to_string();
                        // Byte offsets: the text is the lossy copy of
                        // c[from..]; a valid-UTF-8 prefix keeps offsets.
                        self.mark = from + text[..i + end + 1].len();
                        return Ok(line);
                    }
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!(
                    "{}: QEMU exited ({st}) before {needle:?}:\n{}",
                    self.name,
                    tail(&self.console(), 80)
                ));
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{}: no {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    tail(&self.since_mark(), 80)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Like [`Session::wait_for`], panicking on failure.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for(needle, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Stops QEMU (a power cut) and returns the console.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        self.console()
    }
}

impl Drop for Session {
    /// Stops QEMU and keeps the whole console in the target directory
    /// (`session-NAME.console`), for reading a failure after the fact.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let _ = std::fs::write(
            dir.join(format!("session-{}.console", self.name)),
            self.console(),
        );
    }
}
