//! Reading `.deb` archives: an `ar` archive holding `debian-binary`
//! (`2.0`), `control.tar[.gz|.xz|.zst]` and `data.tar[.gz|.xz|.zst]`, read
//! in one pass.

use std::collections::BTreeMap;
use std::io::{self, Read};

use anyhow::{anyhow, bail, Context, Result};

use super::deb822::{self, Stanza};
use crate::tree::guard::{record_error, HeaderWatch};

/// What a package's control archive holds.
#[derive(Debug, Clone, Default)]
pub struct DebControl {
    /// The `control` file.
    pub control: Stanza,
    /// Absolute paths from `conffiles`.
    pub conffiles: Vec<String>,
    /// Every other member (`md5sums`, `conffiles`, `postinst`, `triggers`,
    /// `shlibs`, …) by name, with its mode: dpkg keeps them all in
    /// `/var/lib/dpkg/info/PKG.NAME`.
    pub info: BTreeMap<String, (u32, Vec<u8>)>,
}

const AR_MAGIC: &[u8] = b"!<arch>\n";
/// Control members larger than this are refused (a real one is a few KiB).
const MAX_CONTROL: u64 = 64 << 20;

/// Reads a `.deb` from `r`: parses the control archive, then hands the
/// decompressed data tar stream to `data`. `what` names the package.
pub fn read_deb<R: Read>(
    mut r: R,
    what: &str,
    data: impl FnOnce(&mut dyn Read) -> Result<()>,
) -> Result<DebControl> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .with_context(|| format!("{what}: reading the ar header"))?;
    if magic != AR_MAGIC {
        bail!("{what}: not a .deb (no `!<arch>` ar signature)");
    }
    let mut pos = 8u64;
    let mut control = None;
    let mut seen_version = false;
    let mut data = Some(data);
    loop {
        let mut h = [0u8; 60];
        match read_full(&mut r, &mut h) {
            Ok(0) => break,
            Ok(60) => {}
            Ok(n) => bail!("{what}: ar member header cut short after {n} bytes"),
            Err(e) => return Err(anyhow!(e).context(format!("{what}: reading the ar archive"))),
        }
        if &h[58..60] != b"`\n" {
            bail!("{what}: bad ar member header at offset {pos}");
        }
        let name = String::from_utf8_lossy(&h[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: u64 = String::from_utf8_lossy(&h[48..58])
            .trim()
            .parse()
            .map_err(|_| anyhow!("{what}: ar member {name:?}: bad size field"))?;
        pos = pos.saturating_add(60 + size.saturating_add(size % 2));
        let mut body = (&mut r).take(size);
        if name == "debian-binary" {
            let mut v = String::new();
            body.read_to_string(&mut v)
                .with_context(|| format!("{what}: reading debian-binary"))?;
            if v.trim_end().split('.').next() != Some("2") {
                bail!(
                    "{what}: unsupported .deb format version {:?} (expected 2.x)",
                    v.trim()
                );
            }
            seen_version = true;
        } else if let Some(comp) = name.strip_prefix("control.tar") {
            if !seen_version {
                bail!("{what}: {name} comes before debian-binary");
            }
            control = Some(read_control(
                decompress(&mut body, comp, what, &name)?,
                what,
            )?);
        } else if let Some(comp) = name.strip_prefix("data.tar") {
            if control.is_none() {
                bail!("{what}: {name} comes before the control archive");
            }
            let f = data
                .take()
                .ok_or_else(|| anyhow!("{what}: two data archives"))?;
            let mut stream = decompress(&mut body, comp, what, &name)?;
            f(&mut stream)?;
            // Drain what the tar reader left (padding, end blocks).
            io::copy(&mut stream, &mut io::sink())
                .with_context(|| format!("{what}: reading {name}"))?;
        } else if name.starts_with('_') {
            // Reserved for future use by dpkg; skipped.
        } else {
            bail!("{what}: unexpected ar member {name:?}");
        }
        io::copy(&mut body, &mut io::sink()).with_context(|| format!("{what}: reading {name}"))?;
        if size % 2 == 1 {
            let mut pad = [0u8; 1];
            let _ = read_full(&mut r, &mut pad)?;
        }
    }
    let control = control.ok_or_else(|| anyhow!("{what}: no control archive"))?;
    if data.is_some() {
        bail!("{what}: no data archive");
    }
    Ok(control)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn decompress<'a>(
    r: &'a mut dyn Read,
    ext: &str,
    what: &str,
    name: &str,
) -> Result<Box<dyn Read + 'a>> {
    Ok(match ext {
        "" => Box::new(r),
        ".gz" => Box::new(flate2::read::MultiGzDecoder::new(r)),
        ".xz" => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        ".zst" => Box::new(
            zstd::stream::read::Decoder::new(r)
                .with_context(|| format!("{what}: opening {name}"))?,
        ),
        other => bail!("{what}: {name}: unsupported compression {other:?} (gz, xz, zst are)"),
    })
}

fn read_control(stream: Box<dyn Read + '_>, what: &str) -> Result<DebControl> {
    let mut out = DebControl::default();
    let mut control = None;
    let watch = HeaderWatch::new();
    let mut archive = tar::Archive::new(watch.guard(stream));
    for entry in archive
        .entries()
        .with_context(|| format!("{what}: reading the control archive"))?
    {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => match record_error(&e) {
                Some(r) => bail!("{what}: control archive: {r}"),
                None => {
                    return Err(anyhow!(e))
                        .with_context(|| format!("{what}: reading the control archive"))
                }
            },
        };
        watch.after(&entry);
        if entry.header().entry_type().is_dir() {
            continue;
        }
        let path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&path);
        let name = name.trim_start_matches("./").to_string();
        if name.contains('/') || name.is_empty() {
            bail!("{what}: control archive member {name:?} is not a plain file name");
        }
        if entry.size() > MAX_CONTROL {
            bail!("{what}: control member {name} is {} bytes", entry.size());
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        let mut buf = Vec::new();
        entry
            .read_to_end(&mut buf)
            .with_context(|| format!("{what}: reading control member {name}"))?;
        if name == "control" {
            let text =
                String::from_utf8(buf).map_err(|_| anyhow!("{what}: control is not UTF-8"))?;
            let mut st = deb822::parse(&text, &format!("{what}: control"))?;
            if st.len() != 1 {
                bail!("{what}: control holds {} stanzas, expected 1", st.len());
            }
            control = st.pop();
            continue;
        }
        if name == "conffiles" {
            out.conffiles = String::from_utf8_lossy(&buf)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                // `remove-on-upgrade /etc/x` flags (dpkg ≥ 1.20.1).
                .map(|l| l.rsplit(' ').next().unwrap_or(l).to_string())
                .collect();
        }
        out.info.insert(name, (mode, buf));
    }
    out.control =
        control.ok_or_else(|| anyhow!("{what}: the control archive has no control file"))?;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a `.deb` in memory: `files` are `(path, mode, content)`;
    /// a path ending in `/` is a directory, `->` makes a symlink.
    pub fn build_deb(
        control: &str,
        extra_control: &[(&str, &[u8])],
        files: &[(&str, u32, &[u8])],
    ) -> Vec<u8> {
        let mut ctl = tar::Builder::new(Vec::new());
        let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_mtime(1_600_000_000);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        };
        add(&mut ctl, "./control", 0o644, control.as_bytes());
        for (n, d) in extra_control {
            add(&mut ctl, &format!("./{n}"), 0o755, d);
        }
        let ctl = ctl.into_inner().unwrap();
        let mut data = tar::Builder::new(Vec::new());
        for (path, mode, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(*mode);
            h.set_mtime(1_600_000_000);
            if let Some((p, target)) = path.split_once(" -> ") {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                data.append_link(&mut h, p, target).unwrap();
            } else if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                data.append_data(&mut h, path, &[][..]).unwrap();
            } else {
                h.set_size(content.len() as u64);
                data.append_data(&mut h, path, *content).unwrap();
            }
        }
        let data = data.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &data).unwrap();
        let data = gz.finish().unwrap();
        let mut out = AR_MAGIC.to_vec();
        for (name, body) in [
            ("debian-binary", &b"2.0\n"[..]),
            ("control.tar", &ctl),
            ("data.tar.gz", &data),
        ] {
            out.extend_from_slice(
                format!(
                    "{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                    0,
                    0,
                    0,
                    100644,
                    body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(body);
            if body.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    #[test]
    fn reads_control_and_data() {
        let deb = build_deb(
            "Package: foo\nVersion: 1\nArchitecture: all\n",
            &[
                ("conffiles", b"/etc/foo.conf\n"),
                ("postinst", b"#!/bin/sh\n"),
            ],
            &[("./", 0o755, b""), ("./etc/foo.conf", 0o644, b"x=1\n")],
        );
        let mut names = Vec::new();
        let c = read_deb(&deb[..], "foo", |r| {
            let mut a = tar::Archive::new(r);
            for e in a.entries()? {
                names.push(String::from_utf8_lossy(&e?.path_bytes()).into_owned());
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(c.control.get("Package"), Some("foo"));
        assert_eq!(c.conffiles, ["/etc/foo.conf"]);
        assert_eq!(c.info["postinst"].0, 0o755);
        assert_eq!(names, ["./", "etc/foo.conf"]);
    }

    /// Mutated archives give errors, never panics.
    #[test]
    fn mutations_do_not_panic() {
        let deb = build_deb(
            "Package: foo\nVersion: 1\nArchitecture: all\nDepends: a (>= 1) | b\n",
            &[("conffiles", b"/etc/foo.conf\n")],
            &[
                ("./etc/foo.conf", 0o644, b"x=1\n"),
                ("./usr/lib/x -> ../y", 0o777, b""),
            ],
        );
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut m = deb.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % m.len() as u64) as usize;
                m[i] = next() as u8;
            }
            if next() % 8 == 0 {
                m.truncate((next() % m.len() as u64) as usize);
            }
            let _ = read_deb(&m[..], "fuzz", |r| {
                let mut a = tar::Archive::new(r);
                for e in a.entries()? {
                    let mut e = e?;
                    io::copy(&mut e, &mut io::sink())?;
                }
                Ok(())
            });
        }
    }

    #[test]
    fn rejects_garbage() {
        let e = read_deb(&b"hello world"[..], "p", |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a .deb"), "{e}");
        let mut deb = build_deb("Package: foo\nVersion: 1\nArchitecture: all\n", &[], &[]);
        deb.truncate(100);
        assert!(read_deb(&deb[..], "p", |_| Ok(())).is_err());
    }
}
