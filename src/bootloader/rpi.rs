//! Raspberry Pi boards and the boot partition of a Pi card
//! (docs/raspberry-pi.md).
//!
//! Boards are data: `bootloader/rpi/boards/*.yaml`, compiled into the
//! binary, each naming a model family's device trees, the Pi firmware
//! files it needs, the U-Boot binary the firmware starts, the SD host
//! drivers its kernel needs, and its `config.txt` section. Where those
//! files come from is the flavor's business (its `rpi` section: packages
//! and the directories they install to). [`card_files`] gathers a card's
//! boot files from a finished root and renders `config.txt` from
//! `bootloader/rpi/config.txt`.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::flavor::RpiFlavor;
use crate::kmod::ModuleIndex;
use crate::tree::edit::Editor;

/// `bootloader/rpi/config.txt`, with `@BOARDS@` and `@EXTRA@` to fill in.
pub const CONFIG_TEMPLATE: &str = include_str!("../../bootloader/rpi/config.txt");

/// The board files: path, YAML text.
const BUILTIN_BOARDS: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/rpi_boards.rs"));

/// How the firmware hands over to the A/B boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootPath {
    /// The firmware starts U-Boot, U-Boot GRUB EFI, GRUB the slot.
    UBoot,
}

/// One board file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Board {
    /// Short name (`pi4`), unique among the boards.
    pub name: String,
    pub description: String,
    /// The `config.txt` conditional filter that selects the models
    /// (`pi4` for `[pi4]`).
    pub config_filter: String,
    pub boot: BootPath,
    /// File names in the flavor's device tree directory.
    pub device_trees: Vec<String>,
    /// File names in the flavor's firmware directory (none for models whose
    /// firmware is in their EEPROM).
    pub firmware: Vec<String>,
    /// Path under the flavor's U-Boot directory (`rpi_arm64/u-boot.bin`).
    pub u_boot: String,
    /// The SD host controller drivers, by module name: the initramfs of an
    /// arm64 image loads them.
    pub sd_modules: Vec<String>,
    /// Lines for the board's `config.txt` section, optional.
    #[serde(default)]
    pub config: String,
    /// The file it came from, for messages.
    #[serde(skip)]
    pub origin: String,
}

fn plain_file(v: &str) -> bool {
    !v.is_empty()
        && v != "."
        && v != ".."
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
}

/// A relative path without `..`, of plain names.
fn relative_path(v: &str) -> bool {
    !v.starts_with('/') && v.split('/').all(plain_file)
}

impl Board {
    /// Parses and checks one board file; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Board> {
        let mut b: Board =
            serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("board {origin}: {e}"))?;
        b.origin = origin.to_string();
        b.validate()?;
        Ok(b)
    }

    fn validate(&self) -> Result<()> {
        let o = &self.origin;
        let word = |v: &str| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if !word(&self.name) {
            bail!(
                "board {o}: field name: {:?} is not a plain name (a-z, 0-9, '-')",
                self.name
            );
        }
        if self.config_filter.is_empty()
            || !self
                .config_filter
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '+')
        {
            bail!(
                "board {o}: field config-filter: {:?} is not a config.txt model filter \
                 (pi3, pi4, pi02, …)",
                self.config_filter
            );
        }
        if self.device_trees.is_empty() {
            bail!("board {o}: field device-trees: lists none");
        }
        for (i, d) in self.device_trees.iter().enumerate() {
            if !plain_file(d) || !d.ends_with(".dtb") {
                bail!("board {o}: field device-trees[{i}]: {d:?} is not a .dtb file name");
            }
        }
        for (i, f) in self.firmware.iter().enumerate() {
            if !plain_file(f) {
                bail!("board {o}: field firmware[{i}]: {f:?} is not a plain file name");
            }
        }
        if !relative_path(&self.u_boot) {
            bail!(
                "board {o}: field u-boot: {:?} is not a relative path without '..'",
                self.u_boot
            );
        }
        if self.sd_modules.is_empty() {
            bail!(
                "board {o}: field sd-modules: lists none (the initramfs must be able to read \
                 the SD card)"
            );
        }
        for (i, m) in self.sd_modules.iter().enumerate() {
            if !plain_file(m) {
                bail!("board {o}: field sd-modules[{i}]: {m:?} is not a module name");
            }
        }
        for (i, line) in self.config.lines().enumerate() {
            if line.trim_start().starts_with('[') {
                bail!(
                    "board {o}: field config, line {}: {line:?}: a board's lines go in its own \
                     [{}] section; they cannot open another",
                    i + 1,
                    self.config_filter
                );
            }
        }
        Ok(())
    }

    /// The file name U-Boot gets on the card (`u-boot-rpi_arm64.bin`): one
    /// per U-Boot build, shared by the boards that use it.
    pub fn u_boot_name(&self) -> String {
        let dir = self
            .u_boot
            .rsplit_once('/')
            .map(|(d, _)| d.replace('/', "-"))
            .unwrap_or_else(|| "rpi".into());
        format!("u-boot-{dir}.bin")
    }
}

/// The built-in boards, in file name order.
pub fn boards() -> Result<Vec<Board>> {
    parse_all(BUILTIN_BOARDS)
}

fn parse_all(files: &[(&str, &str)]) -> Result<Vec<Board>> {
    let mut out: Vec<Board> = Vec::new();
    for (path, text) in files {
        let b = Board::parse(text, path)?;
        if let Some(other) = out.iter().find(|o| o.name == b.name) {
            bail!(
                "board {path}: field name: {:?} is also the name of {}",
                b.name,
                other.origin
            );
        }
        out.push(b);
    }
    Ok(out)
}

/// Every board's SD host drivers, for the initramfs of an arm64 image.
pub fn sd_modules(boards: &[Board]) -> Vec<String> {
    let mut m: Vec<String> = boards.iter().flat_map(|b| b.sd_modules.clone()).collect();
    m.sort();
    m.dedup();
    m
}

/// What a card does for one board, for the build's messages and `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BoardSupport {
    pub board: String,
    pub description: String,
    pub boot: BootPath,
    /// U-Boot's file on the card.
    pub u_boot: String,
    /// The board's device trees the kernel has (on the card).
    pub device_trees: Vec<String>,
    /// The board's device trees the kernel does not have.
    pub missing_device_trees: Vec<String>,
    /// Whether the kernel has (built in or as a module) a driver for the
    /// board's SD slot.
    pub sd_driver: bool,
    /// A problem that stops the card from booting this board, said plainly.
    pub problem: Option<String>,
}

/// The Pi files of a card's boot partition, by file name at its root.
pub struct CardFiles {
    pub files: BTreeMap<String, Vec<u8>>,
    pub boards: Vec<BoardSupport>,
}

impl CardFiles {
    /// Writes the files at the root of a boot partition tree.
    pub fn write(&self, ed: &mut Editor<'_>) -> Result<()> {
        for (name, data) in &self.files {
            ed.write(name, data, 0o644)?;
        }
        Ok(())
    }
}

/// Gathers the card's firmware, device trees and U-Boot from the finished
/// root (`ed`) as the flavor's `rpi` section says where they are, and
/// renders config.txt with the flavor's and the user's additions
/// (`extra`). A firmware or U-Boot file that is missing is an error naming
/// the packages that should have provided it; a board whose device trees
/// or SD driver the kernel lacks is reported in its [`BoardSupport`].
pub fn card_files(
    ed: &Editor<'_>,
    flavor: &RpiFlavor,
    flavor_origin: &str,
    boards: &[Board],
    kernel: &ModuleIndex,
    extra: &[&str],
) -> Result<CardFiles> {
    let packages = flavor.packages.join(", ");
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut support = Vec::new();
    let mut sections = String::new();
    let dtb_dir = flavor.device_tree_dir.replace("{kernel}", &kernel.version);
    for b in boards {
        let need = |dir: &str, name: &str, what: &str| -> Result<Vec<u8>> {
            let path = format!("{}/{name}", dir.trim_end_matches('/'));
            ed.read_following(&path)?.with_context(|| {
                format!(
                    "board {} ({}): {what} /{path} is not in the image: the flavor {flavor_origin} \
                     names {packages} in rpi.packages and none of them installed it",
                    b.name, b.origin
                )
            })
        };
        for f in &b.firmware {
            if !files.contains_key(f) {
                let data = need(&flavor.firmware_dir, f, "the Raspberry Pi firmware file")?;
                files.insert(f.clone(), data);
            }
        }
        let u_boot = b.u_boot_name();
        if !files.contains_key(&u_boot) {
            let data = need(&flavor.u_boot_dir, &b.u_boot, "the U-Boot binary")?;
            files.insert(u_boot.clone(), data);
        }
        let (mut found, mut missing) = (Vec::new(), Vec::new());
        for d in &b.device_trees {
            let path = format!("{}/{d}", dtb_dir.trim_end_matches('/'));
            match ed.read_following(&path)? {
                Some(data) => {
                    files.insert(d.clone(), data);
                    found.push(d.clone());
                }
                None => missing.push(d.clone()),
            }
        }
        let sd_driver = b.sd_modules.iter().any(|m| {
            let n = crate::kmod::normalise(m);
            kernel.modules.contains_key(&n) || kernel.builtin.contains(&n)
        });
        let problem = if found.is_empty() {
            Some(format!(
                "kernel {} has none of its device trees ({}) in /{dtb_dir}: the firmware has \
                 nothing to start it with",
                kernel.version,
                b.device_trees.join(", ")
            ))
        } else if !sd_driver {
            Some(format!(
                "kernel {} has no driver for its SD slot ({}): U-Boot and GRUB start, but the \
                 kernel cannot read the card",
                kernel.version,
                b.sd_modules.join(", ")
            ))
        } else {
            None
        };
        sections.push_str(&format!(
            "# {}: {}\n[{}]\nkernel={u_boot}\n",
            b.name, b.description, b.config_filter
        ));
        for line in b.config.lines() {
            sections.push_str(line);
            sections.push('\n');
        }
        support.push(BoardSupport {
            board: b.name.clone(),
            description: b.description.clone(),
            boot: b.boot,
            u_boot,
            device_trees: found,
            missing_device_trees: missing,
            sd_driver,
            problem,
        });
    }
    files.insert(
        "config.txt".into(),
        render_config(&sections, extra).into_bytes(),
    );
    Ok(CardFiles {
        files,
        boards: support,
    })
}

/// `bootloader/rpi/config.txt` with the board sections and the additions.
pub fn render_config(sections: &str, extra: &[&str]) -> String {
    let mut add = String::new();
    for e in extra {
        add.push_str(e.trim_end_matches('\n'));
        add.push('\n');
    }
    CONFIG_TEMPLATE
        .replace("@BOARDS@\n", sections)
        .replace("@EXTRA@\n", &add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_boards_are_valid_and_cover_pi3_pi4_pi5() {
        let b = boards().unwrap();
        let names: Vec<&str> = b.iter().map(|b| b.name.as_str()).collect();
        for want in ["pi3", "pi4", "pi5", "pi02"] {
            assert!(names.contains(&want), "{names:?}");
        }
        let pi3 = b.iter().find(|b| b.name == "pi3").unwrap();
        assert_eq!(pi3.origin, "bootloader/rpi/boards/pi3.yaml");
        assert!(pi3
            .device_trees
            .contains(&"bcm2837-rpi-3-b.dtb".to_string()));
        assert!(pi3.firmware.contains(&"bootcode.bin".to_string()));
        assert_eq!(pi3.u_boot_name(), "u-boot-rpi_arm64.bin");
        let m = sd_modules(&b);
        assert!(m.contains(&"bcm2835".into()) && m.contains(&"sdhci_iproc".into()));
    }

    fn pi3_with(replace: &str, by: &str) -> String {
        let text = BUILTIN_BOARDS
            .iter()
            .find(|(p, _)| p.ends_with("/pi3.yaml"))
            .unwrap()
            .1;
        assert!(text.contains(replace), "fixture text {replace:?} missing");
        text.replacen(replace, by, 1)
    }

    fn err(text: &str) -> String {
        format!("{:#}", Board::parse(text, "boards/x.yaml").unwrap_err())
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let e = err(&pi3_with("name: pi3", "name: pi3\nnmae: x"));
        assert!(e.contains("boards/x.yaml") && e.contains("nmae"), "{e}");
        let e = err(&pi3_with("name: pi3", "name: Pi 3"));
        assert!(e.contains("field name") && e.contains("Pi 3"), "{e}");
        let e = err(&pi3_with("config-filter: pi3", "config-filter: \"[pi3]\""));
        assert!(e.contains("field config-filter"), "{e}");
        let e = err(&pi3_with("  - bcm2837-rpi-3-b.dtb", "  - ../etc/passwd"));
        assert!(
            e.contains("field device-trees[0]") && e.contains("passwd"),
            "{e}"
        );
        let e = err(&pi3_with("[bootcode.bin,", "[boot/code.bin,"));
        assert!(e.contains("field firmware[0]"), "{e}");
        let e = err(&pi3_with("u-boot: rpi_arm64", "u-boot: ../rpi_arm64"));
        assert!(e.contains("field u-boot"), "{e}");
        let e = err(&pi3_with(
            "sd-modules: [bcm2835, sdhci_iproc]",
            "sd-modules: []",
        ));
        assert!(
            e.contains("field sd-modules") && e.contains("lists none"),
            "{e}"
        );
        let e = err(&pi3_with("boot: u-boot", "boot: tryboot"));
        assert!(e.contains("boards/x.yaml") && e.contains("tryboot"), "{e}");
        let e = err(&format!("{}config: |\n  [all]\n", pi3_with("", "")));
        assert!(
            e.contains("field config, line 1") && e.contains("[pi3]"),
            "{e}"
        );
        let pi3 = pi3_with("", "");
        let e = format!(
            "{:#}",
            parse_all(&[("a/pi3.yaml", &pi3), ("b/other.yaml", &pi3)]).unwrap_err()
        );
        assert!(
            e.contains("b/other.yaml") && e.contains("a/pi3.yaml"),
            "{e}"
        );
    }

    #[test]
    fn config_has_the_common_lines_the_sections_then_the_additions() {
        let t = render_config(
            "# pi3: x\n[pi3]\nkernel=u-boot-rpi_arm64.bin\n",
            &["dtoverlay=disable-bt\n", "gpu_mem=16"],
        );
        let pos = |s: &str| t.find(s).unwrap_or_else(|| panic!("{s:?} not in\n{t}"));
        assert!(pos("arm_64bit=1") < pos("[pi3]"));
        assert!(pos("[pi3]\nkernel=u-boot-rpi_arm64.bin") < pos("dtoverlay=disable-bt"));
        assert!(
            t.ends_with("[all]\ndtoverlay=disable-bt\ngpu_mem=16\n"),
            "{t}"
        );
        assert!(!t.contains('@'), "{t}");
    }
}
