//! The in-process core.img assembler (`bootloader::bios::coreimg`) against
//! `grub-mkimage` for bookworm's GRUB 2.06 (the host's grub-common is the
//! same upstream version as bookworm's grub-pc-bin): once decompressed,
//! both images carry the same kernel, the same modules in the same order,
//! the same embedded config and prefix, and the fixed header fields agree.
//! Only the LZMA stream differs. Then the refusals, on the real files.
//!
//! That the images boot (bookworm's and trixie's GRUB under SeaBIOS) is
//! tests/boot_bios.rs.

mod common;

use std::fs;
use std::path::Path;

use build_image::bootloader::bios::coreimg::{
    self, CoreImgError, CoreSpec, PcFiles, Unpacked, COMPRESSED_SIZE_OFFSET, DISKBOOT_SIZE,
    OBJ_TYPE_CONFIG, OBJ_TYPE_ELF, OBJ_TYPE_PREFIX,
};
use build_image::bootloader::bios::{self, GrubPc};
use build_image::tree::ContentStore;
use common::boot::{deb_tree, file_bytes};
use common::fixtures::debian_package_deb;
use common::grub_mkimage;

const LABEL: &str = "BUILD_IMAGE_TEST";

/// Bookworm's `/usr/lib/grub/i386-pc`, written out to `dir` (for
/// grub-mkimage) and read back as [`PcFiles`].
fn bookworm_i386_pc(dir: &Path) -> PcFiles {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let tree = deb_tree(&debian_package_deb("grub-pc-bin", "amd64"), &mut store);
    let src = tree.lookup_path(bios::I386_PC_DIR.as_bytes()).unwrap();
    fs::create_dir_all(dir).unwrap();
    for (name, _) in tree.children(src) {
        let name = std::str::from_utf8(name).unwrap();
        let p = format!("{}/{name}", bios::I386_PC_DIR);
        fs::write(dir.join(name), file_bytes(&tree, &store, &p)).unwrap();
    }
    PcFiles::from_dir(dir).unwrap()
}

/// The module objects of `u` named by the `.mod` file whose bytes (padded
/// to 4) they are.
fn module_names(u: &Unpacked, files: &PcFiles, moddep: &[String]) -> Vec<String> {
    u.objects
        .iter()
        .filter(|o| o.kind == OBJ_TYPE_ELF)
        .map(|o| {
            moddep
                .iter()
                .find(|m| {
                    // moddep.lst also lists the kernel's own "modules".
                    let Some(data) = files.get(&format!("{m}.mod")) else {
                        return false;
                    };
                    o.data.len() == data.len().next_multiple_of(4)
                        && o.data[..data.len()] == *data
                        && o.data[data.len()..].iter().all(|&b| b == 0)
                })
                .unwrap_or_else(|| {
                    panic!("a module object of {} bytes is no .mod file", o.data.len())
                })
                .clone()
        })
        .collect()
}

/// Compares the disk core images (diskboot.img first) `ours` and `theirs`.
fn assert_same_content(what: &str, ours: &[u8], theirs: &[u8], files: &PcFiles, spec: &CoreSpec) {
    let o = coreimg::unpack(ours).unwrap_or_else(|e| panic!("{what}: ours: {e}"));
    let t = coreimg::unpack(theirs).unwrap_or_else(|e| panic!("{what}: grub-mkimage's: {e}"));

    // The same kernel, objects, and sizes once decompressed.
    assert_eq!(o.kernel.len(), t.kernel.len(), "{what}: kernel size");
    assert!(o.kernel == t.kernel, "{what}: the kernels differ");
    assert_eq!(o.uncompressed_size, t.uncompressed_size, "{what}");
    assert_eq!(o.total_module_size, t.total_module_size, "{what}");
    let kinds = |u: &Unpacked| u.objects.iter().map(|o| o.kind).collect::<Vec<_>>();
    assert_eq!(kinds(&o), kinds(&t), "{what}: object types");
    let all: Vec<String> = coreimg::parse_moddep(files.get("moddep.lst").unwrap())
        .unwrap()
        .into_keys()
        .collect();
    let names = module_names(&o, files, &all);
    assert_eq!(names, module_names(&t, files, &all), "{what}: modules");
    let moddep = coreimg::parse_moddep(files.get("moddep.lst").unwrap()).unwrap();
    assert_eq!(
        names,
        coreimg::resolve(&moddep, spec.modules).unwrap(),
        "{what}"
    );
    for m in spec.modules {
        assert!(names.iter().any(|n| n == m), "{what}: {m} not built in");
    }
    assert!(o.objects == t.objects, "{what}: the objects differ");
    let text = |u: &Unpacked, kind| {
        let found: Vec<String> = u
            .objects
            .iter()
            .filter(|o| o.kind == kind)
            .map(|o| o.text())
            .collect();
        found
    };
    let config: &[&str] = if spec.config.is_empty() {
        &[]
    } else {
        &[spec.config]
    };
    assert_eq!(text(&t, OBJ_TYPE_CONFIG), config, "{what}");
    assert_eq!(text(&t, OBJ_TYPE_PREFIX), [spec.prefix], "{what}");
    assert_eq!(text(&o, OBJ_TYPE_CONFIG), config, "{what}");
    assert_eq!(text(&o, OBJ_TYPE_PREFIX), [spec.prefix], "{what}");

    // The decompressor: the same bytes but for the compressed size.
    assert_eq!(o.decompressor.len(), t.decompressor.len(), "{what}");
    let cs = COMPRESSED_SIZE_OFFSET..COMPRESSED_SIZE_OFFSET + 4;
    assert_eq!(
        o.decompressor[..cs.start],
        t.decompressor[..cs.start],
        "{what}"
    );
    assert_eq!(o.decompressor[cs.end..], t.decompressor[cs.end..], "{what}");
    assert_eq!(
        o.compressed_size as usize,
        ours.len() - DISKBOOT_SIZE - o.decompressor.len()
    );
    // diskboot.img: the same but for its sector count, each right.
    for (u, img) in [(&o, ours), (&t, theirs)] {
        let sectors = (img.len() - DISKBOOT_SIZE).div_ceil(DISKBOOT_SIZE) as u16;
        assert_eq!(u.diskboot[508..510], sectors.to_le_bytes(), "{what}");
    }
    assert_eq!(o.diskboot[..508], t.diskboot[..508], "{what}");
    assert_eq!(o.diskboot[510..], t.diskboot[510..], "{what}");
    // The LZMA stream may differ, not by much.
    assert!(
        ours.len() <= theirs.len() + theirs.len() / 20,
        "{what}: ours {} bytes, grub-mkimage's {}",
        ours.len(),
        theirs.len()
    );
    eprintln!(
        "{what}: {} modules, {} bytes uncompressed; core.img {} bytes, grub-mkimage's {}",
        names.len(),
        o.uncompressed_size,
        ours.len(),
        theirs.len()
    );
}

#[test]
fn native_core_img_carries_what_grub_mkimage_puts_in() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("i386-pc");
    let files = bookworm_i386_pc(&dir);
    let host = grub_mkimage::version();
    assert_eq!(
        files.grub_version().as_deref(),
        Some(host.as_str()),
        "the host's grub-mkimage must be bookworm's GRUB version to serve as the reference"
    );
    let grub = GrubPc::from_files(files.clone());

    // The disk's core image, as the build makes it: no early config, the
    // ESP by its partition number on the boot drive.
    let prefix = bios::disk_prefix(2, "/EFI/debian").unwrap();
    assert_eq!(prefix, "(,gpt2)/EFI/debian");
    let spec = CoreSpec {
        modules: bios::MODULES,
        config: "",
        prefix: &prefix,
    };
    let ours = grub.disk_images(2, "/EFI/debian").unwrap().core_img;
    let theirs = grub_mkimage::run("i386-pc", &dir, spec.config, spec.prefix, spec.modules);
    assert_same_content("disk", &ours, &theirs, &files, &spec);
    // Deterministic: the same inputs, the same bytes.
    assert_eq!(ours, coreimg::assemble(&files, &spec).unwrap());

    // The live ISO's El Torito image: cdboot.img, then a core image.
    let config = bios::iso_early_config(LABEL, "/boot/grub").unwrap();
    let spec = CoreSpec {
        modules: bios::ISO_MODULES,
        config: &config,
        prefix: "/boot/grub",
    };
    let ours = grub.iso_images(LABEL, "/boot/grub").unwrap().core_img;
    let theirs = grub_mkimage::run(
        "i386-pc-eltorito",
        &dir,
        spec.config,
        spec.prefix,
        spec.modules,
    );
    assert_eq!(ours[..bios::CDBOOT_SIZE], theirs[..bios::CDBOOT_SIZE]);
    assert_same_content(
        "El Torito",
        &ours[bios::CDBOOT_SIZE..],
        &theirs[bios::CDBOOT_SIZE..],
        &files,
        &spec,
    );
}

fn core_err(r: anyhow::Result<Vec<u8>>) -> (CoreImgError, String) {
    let e = r.unwrap_err();
    let text = format!("{e:#}");
    let typed = e
        .downcast_ref::<CoreImgError>()
        .unwrap_or_else(|| panic!("not a CoreImgError: {text}"))
        .clone();
    (typed, text)
}

#[test]
fn bad_grub_files_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("i386-pc");
    bookworm_i386_pc(&dir);
    let build = || bios::core_image(&dir, 2, "/EFI/debian");
    // The directory as shipped works.
    let core = build().unwrap();
    assert!(coreimg::unpack(&core).is_ok());

    // A missing module file.
    let loadenv = fs::read(dir.join("loadenv.mod")).unwrap();
    fs::remove_file(dir.join("loadenv.mod")).unwrap();
    let (e, text) = core_err(build());
    assert_eq!(e, CoreImgError::MissingFile("loadenv.mod".into()));
    assert!(
        text.contains("loadenv.mod") && text.contains("grub-pc-bin") && text.contains("i386-pc"),
        "{text}"
    );
    fs::write(dir.join("loadenv.mod"), &loadenv).unwrap();

    // Modules missing from moddep.lst: a requested one, and a dependency.
    let moddep = fs::read_to_string(dir.join("moddep.lst")).unwrap();
    let without = |name: &str| {
        let prefix = format!("{name}:");
        let kept: Vec<&str> = moddep.lines().filter(|l| !l.starts_with(&prefix)).collect();
        assert!(kept.len() < moddep.lines().count(), "no {name} line");
        kept.join("\n") + "\n"
    };
    fs::write(dir.join("moddep.lst"), without("loadenv")).unwrap();
    let (e, text) = core_err(build());
    assert_eq!(
        e,
        CoreImgError::ModuleNotListed {
            module: "loadenv".into(),
            needed_by: None
        }
    );
    assert!(text.contains("moddep.lst"), "{text}");
    fs::write(dir.join("moddep.lst"), without("fshelp")).unwrap();
    let (e, text) = core_err(build());
    assert_eq!(
        e,
        CoreImgError::ModuleNotListed {
            module: "fshelp".into(),
            needed_by: Some("fat".into())
        }
    );
    assert!(text.contains("fshelp (needed by fat)"), "{text}");
    fs::write(dir.join("moddep.lst"), &moddep).unwrap();

    // A truncated kernel.img.
    let kernel = fs::read(dir.join("kernel.img")).unwrap();
    fs::write(dir.join("kernel.img"), &kernel[..kernel.len() / 2]).unwrap();
    let (e, text) = core_err(build());
    assert!(
        matches!(&e, CoreImgError::KernelTruncated { size, .. } if *size == kernel.len() / 2),
        "{e}"
    );
    assert!(text.contains("kernel.img is truncated"), "{text}");
    fs::write(dir.join("kernel.img"), &kernel[..40]).unwrap();
    assert!(matches!(core_err(build()).0, CoreImgError::KernelNotElf(_)));
    fs::write(dir.join("kernel.img"), &kernel).unwrap();

    // Too much to load: a module bloated with incompressible bytes.
    let echo = fs::read(dir.join("echo.mod")).unwrap();
    fs::write(dir.join("echo.mod"), common::noise(600_000, 0x9e37_79b9)).unwrap();
    let (e, text) = core_err(build());
    assert!(
        matches!(&e, CoreImgError::TooLarge { largest, .. } if largest.starts_with("echo 600000 bytes")),
        "{e}"
    );
    assert!(text.contains("embed fewer modules"), "{text}");
    fs::write(dir.join("echo.mod"), echo).unwrap();

    // A bad partition number or prefix never reaches the image.
    assert!(bios::core_image(&dir, 0, "/EFI/debian").is_err());
    assert!(bios::core_image(&dir, 129, "/EFI/debian").is_err());
    assert!(bios::core_image(&dir, 2, "/EFI/a b").is_err());
    assert_eq!(build().unwrap(), core);
}

/// The pipeline reads the image's i386-pc files once: what the disk's or
/// the ISO's core image would miss is refused then, before anything is
/// written.
#[test]
fn an_image_without_a_needed_module_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ContentStore::new_in(tmp.path()).unwrap();
    let mut tree = deb_tree(&debian_package_deb("grub-pc-bin", "amd64"), &mut store);
    assert!(GrubPc::from_tree(&tree, &store).is_ok());
    let dir = tree.lookup_path(bios::I386_PC_DIR.as_bytes()).unwrap();
    // Only the ISO's core image needs iso9660.
    tree.unlink(dir, b"iso9660.mod").unwrap();
    let e = GrubPc::from_tree(&tree, &store).err().unwrap();
    assert_eq!(
        e.downcast_ref::<CoreImgError>(),
        Some(&CoreImgError::MissingFile("iso9660.mod".into()))
    );
    let text = format!("{e:#}");
    assert!(text.contains("/usr/lib/grub/i386-pc"), "{text}");
    // Only the ISO's El Torito image needs cdboot.img.
    let mut tree = deb_tree(&debian_package_deb("grub-pc-bin", "amd64"), &mut store);
    let dir = tree.lookup_path(bios::I386_PC_DIR.as_bytes()).unwrap();
    tree.unlink(dir, b"cdboot.img").unwrap();
    let e = GrubPc::from_tree(&tree, &store).err().unwrap();
    assert_eq!(
        e.downcast_ref::<CoreImgError>(),
        Some(&CoreImgError::MissingFile("cdboot.img".into()))
    );
}
