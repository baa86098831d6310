//! One QEMU runner for every boot test: a builder for the machine (firmware,
//! drives, NIC) and a console reader that stops on a line, an exit or a
//! timeout.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::require_tool;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF built with Secure Boot (and SMM to guard its variables).
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// A variable store with Microsoft's keys enrolled and Secure Boot on, as
/// PCs ship: it trusts the distributions' shim.
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// Copies the firmware's empty variable store `template` to `vars`, so a
/// boot starts with no boot entries of an earlier one.
pub fn fresh_vars(template: &str, vars: &Path) {
    fs::copy(template, vars).unwrap();
}

/// A QEMU machine under TCG (KVM hangs on these machines), serial console
/// on stdio, no default devices, no reboot (a guest reboot ends the run).
#[derive(Debug, Clone)]
pub struct Vm {
    qemu: &'static str,
    args: Vec<String>,
    /// Keys typed on the serial console once the trigger text appears.
    keys: Option<(String, Vec<String>)>,
}

impl Vm {
    /// An x86_64 PC with `mem` MiB; SeaBIOS unless [`Vm::ovmf`] is added.
    pub fn x86_64(mem: u32) -> Vm {
        Vm::new("qemu-system-x86_64", mem)
    }

    /// An aarch64 `virt` machine with `mem` MiB (firmware: [`Vm::aavmf`],
    /// or `-kernel`).
    pub fn aarch64(mem: u32) -> Vm {
        Vm::new("qemu-system-aarch64", mem).args(["-M", "virt", "-cpu", "max"])
    }

    /// QEMU's Raspberry Pi 3 B (`-M raspi3b`, exactly 1 GiB, one TCG
    /// thread: multi-threaded TCG is several times slower there) starting
    /// `kernel` (U-Boot, or a Linux Image) with the device tree `dtb`, as
    /// the Pi's firmware would (QEMU cannot run the GPU firmware). The
    /// first serial port (the PL011, the kernel's ttyAMA0) is the console;
    /// U-Boot prints on the second, kept in `uart1`.
    pub fn raspi3b(kernel: &Path, dtb: &Path, uart1: &Path) -> Vm {
        Vm {
            qemu: "qemu-system-aarch64",
            args: vec![
                "-M".into(),
                "raspi3b".into(),
                "-m".into(),
                "1024".into(),
                "-accel".into(),
                "tcg,thread=single".into(),
                "-nographic".into(),
                "-no-reboot".into(),
                "-nodefaults".into(),
                "-serial".into(),
                "stdio".into(),
                "-serial".into(),
                format!("file:{}", uart1.display()),
                "-kernel".into(),
                kernel.display().to_string(),
                "-dtb".into(),
                dtb.display().to_string(),
            ],
            keys: None,
        }
    }

    /// An SD card (its size must be a power of two for QEMU's Pi models).
    pub fn sd_card(self, path: &Path) -> Vm {
        self.args([
            "-drive".to_string(),
            format!("file={},format=raw,if=sd", path.display()),
        ])
    }

    fn new(qemu: &'static str, mem: u32) -> Vm {
        Vm {
            qemu,
            args: vec![
                "-accel".into(),
                "tcg".into(),
                "-m".into(),
                mem.to_string(),
                "-nographic".into(),
                "-no-reboot".into(),
                "-nodefaults".into(),
                "-serial".into(),
                "stdio".into(),
            ],
            keys: None,
        }
    }

    /// Types `keys` on the serial console, a second apart, once `trigger`
    /// appears on it: a menu choice, as a user at the console makes it
    /// (OVMF reads the serial line as a keyboard; SeaBIOS does not).
    pub fn keys_on(mut self, trigger: &str, keys: &[&str]) -> Vm {
        let keys = keys.iter().map(|k| k.to_string()).collect();
        self.keys = Some((trigger.into(), keys));
        self
    }

    /// Lets a guest reboot (or a watchdog reset it) within the run, instead
    /// of ending it: for boots that must come back by themselves.
    pub fn allow_reboot(mut self) -> Vm {
        self.args.retain(|a| a != "-no-reboot");
        self
    }

    /// QEMU's i6300esb watchdog (a reset when it fires).
    pub fn watchdog(self) -> Vm {
        self.args(["-device", "i6300esb", "-action", "watchdog=reset"])
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Vm {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    fn pflash(self, code: &str, vars: &Path) -> Vm {
        self.args([
            "-drive".into(),
            format!("if=pflash,format=raw,readonly=on,file={code}"),
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", vars.display()),
        ])
    }

    /// UEFI on x86_64, with the variable store `vars` (see [`fresh_vars`]).
    pub fn ovmf(self, vars: &Path) -> Vm {
        self.pflash(OVMF_CODE, vars)
    }

    /// UEFI with Secure Boot enforced, on a q35 machine with SMM (the
    /// secure firmware needs it), with `vars` copied from [`OVMF_VARS_MS`].
    pub fn ovmf_secure_boot(self, vars: &Path) -> Vm {
        self.args([
            "-machine",
            "q35,smm=on",
            "-global",
            "driver=cfi.pflash01,property=secure,value=on",
        ])
        .pflash(OVMF_CODE_SECBOOT, vars)
    }

    /// UEFI on aarch64, with the variable store `vars`.
    pub fn aavmf(self, vars: &Path) -> Vm {
        self.pflash(AAVMF_CODE, vars)
    }

    /// A CPU without SSE4.2 (as on some CI machines): the initramfs meets
    /// a module its CPU cannot run (`crc32c-intel`) and must carry on.
    pub fn no_sse42(self) -> Vm {
        self.args(["-cpu", "qemu64,-sse4.2"])
    }

    /// `path` as a raw virtio disk (`/dev/vd*`).
    pub fn virtio_disk(self, path: &Path) -> Vm {
        self.args([
            "-drive".into(),
            format!("file={},if=virtio,format=raw", path.display()),
        ])
    }

    /// `path` as a read-only raw virtio disk: an ISO `dd`'d to a disk.
    pub fn virtio_disk_ro(self, path: &Path) -> Vm {
        self.args([
            "-drive".into(),
            format!("file={},if=virtio,format=raw,readonly=on", path.display()),
        ])
    }

    /// `path` as a raw virtio-blk PCI disk (the form `virt` machines need).
    pub fn virtio_pci_disk(self, path: &Path) -> Vm {
        self.args([
            "-drive".into(),
            format!("if=none,id=d0,file={},format=raw", path.display()),
            "-device".into(),
            "virtio-blk-pci,drive=d0".into(),
        ])
    }

    /// `iso` in an IDE CD-ROM drive.
    pub fn ide_cd(self, iso: &Path) -> Vm {
        self.args([
            "-drive".into(),
            format!(
                "file={},if=ide,media=cdrom,format=raw,readonly=on",
                iso.display()
            ),
        ])
    }

    /// `iso` in a virtio-scsi CD-ROM drive.
    pub fn scsi_cd(self, iso: &Path) -> Vm {
        self.args([
            "-device".into(),
            "virtio-scsi-pci".into(),
            "-drive".into(),
            format!(
                "if=none,id=cd,file={},media=cdrom,format=raw,readonly=on",
                iso.display()
            ),
            "-device".into(),
            "scsi-cd,drive=cd".into(),
        ])
    }

    /// `image` as a removable USB stick on an xHCI controller.
    pub fn usb_stick(self, image: &Path) -> Vm {
        self.args([
            "-device".into(),
            "qemu-xhci".into(),
            "-drive".into(),
            format!(
                "if=none,id=stick,file={},format=raw,readonly=on",
                image.display()
            ),
            "-device".into(),
            "usb-storage,drive=stick,removable=on".into(),
        ])
    }

    /// A virtio NIC on QEMU's user-mode network.
    pub fn nic(self) -> Vm {
        self.args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
    }

    /// A virtio NIC on QEMU's user-mode network with the guest's SSH port
    /// forwarded to 127.0.0.1:`port` on the host.
    pub fn nic_ssh(self, port: u16) -> Vm {
        self.args([
            "-netdev".into(),
            format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"),
            "-device".into(),
            "virtio-net-pci,netdev=n0".into(),
        ])
    }

    /// The QEMU program and its arguments (for [`super::session`]).
    pub fn command_line(&self) -> (&'static str, &[String]) {
        (self.qemu, &self.args)
    }

    /// Runs until `ready` appears on the console (its line complete), then
    /// calls `f` with the console so far while the guest goes on running
    /// (to reach it over the network), then stops QEMU. Returns what `f`
    /// returned (None when `ready` never came: os-init failed, the guest
    /// stopped, or `timeout` passed) and the whole console.
    pub fn while_up<T>(
        &self,
        ready: &str,
        timeout: Duration,
        f: impl FnOnce(&str) -> T,
    ) -> (Option<T>, String) {
        let mut f = Some(f);
        let mut result = None;
        let (_, console) = self.run_while(timeout, |text| {
            if text.find(ready).is_some_and(|i| text[i..].contains('\n')) {
                result = f.take().map(|f| f(text));
                return false;
            }
            !(text.contains("os-init: error") && text.contains("rebooting"))
        });
        (result, console)
    }

    /// Runs until the guest powers off (or reboots) or `timeout` passes.
    /// Returns the exit status (`None` on timeout) and the console, with
    /// anything QEMU printed on stderr appended.
    pub fn run(&self, timeout: Duration) -> (Option<ExitStatus>, String) {
        self.run_while(timeout, |_| true)
    }

    /// Runs until `done` appears on the console (and its line is
    /// complete), os-init reports a fatal error, the guest powers off, or
    /// `timeout` passes; stopping QEMU is a power cut, which the agent's
    /// fsync'd state must survive. Returns the console.
    pub fn run_until(&self, done: &str, timeout: Duration) -> String {
        self.run_while(timeout, |text| {
            let finished = text.find(done).is_some_and(|i| text[i..].contains('\n'));
            let failed = text.contains("os-init: error") && text.contains("rebooting");
            !finished && !failed
        })
        .1
    }

    /// [`Vm::run_until`] for several markers: runs until each of `all`
    /// appears with its line complete, in any order.
    pub fn run_until_all(&self, all: &[&str], timeout: Duration) -> String {
        self.run_while(timeout, |text| {
            let finished = all
                .iter()
                .all(|done| text.find(done).is_some_and(|i| text[i..].contains('\n')));
            let failed = text.contains("os-init: error") && text.contains("rebooting");
            !finished && !failed
        })
        .1
    }

    fn run_while(
        &self,
        timeout: Duration,
        mut go_on: impl FnMut(&str) -> bool,
    ) -> (Option<ExitStatus>, String) {
        require_tool(
            self.qemu,
            "qemu-system-x86 / qemu-system-arm (from bookworm-backports, see .ci/run)",
        );
        let mut child = Command::new(self.qemu)
            .args(&self.args)
            .stdin(if self.keys.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let err_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });
        let mut keys = self.keys.clone().zip(child.stdin.take());
        let mut typed_into = None;
        let start = Instant::now();
        let mut console = Vec::new();
        let mut status = None;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(chunk) => {
                    console.extend_from_slice(&chunk);
                    console.extend(rx.try_iter().flatten());
                    let text = String::from_utf8_lossy(&console);
                    if keys.as_ref().is_some_and(|((t, _), _)| text.contains(t)) {
                        let ((_, typed), mut stdin) = keys.take().unwrap();
                        for k in typed {
                            std::thread::sleep(Duration::from_secs(1));
                            let _ = stdin.write_all(k.as_bytes());
                            let _ = stdin.flush();
                        }
                        // Kept open until QEMU stops: EOF would close
                        // the guest's console input.
                        typed_into = Some(stdin);
                    }
                    if !go_on(&text) {
                        break;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    status = Some(child.wait().unwrap());
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if start.elapsed() > timeout {
                break;
            }
        }
        // What the guest printed while `go_on` ran.
        console.extend(rx.try_iter().flatten());
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(typed_into);
        let mut console = String::from_utf8_lossy(&console).into_owned();
        let err = err_reader.join().unwrap();
        if !err.trim().is_empty() {
            console.push_str("\n[qemu stderr]\n");
            console.push_str(&err);
        }
        (status, console)
    }
}

/// The agent's `os-agent: boot …` line, if the console has one.
pub fn boot_line(console: &str) -> Option<String> {
    console
        .lines()
        .find(|l| l.contains("os-agent: boot "))
        .map(|l| l[l.find("os-agent: boot ").unwrap()..].trim().to_string())
}

/// The last `n` lines of console output, for assertion messages.
pub fn tail(console: &str, n: usize) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
