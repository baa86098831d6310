//! The node configuration as the agent reads it: the types and rules
//! live in the `node-config` crate (shared with `build-image --config`);
//! here, which files apply and how they are found on the device.
//!
//! Sources, in the order they apply (later wins, see [`merge`]):
//! 1. [`IMAGE_CONFIG`], baked into the image by `build-image --config`;
//! 2. [`ESP_CONFIG`] on the ESP, put there by `os-agent install --config`
//!    (read on an A/B boot only, not on the live system);
//! 3. [`DEVICE_CONFIG`], the device's own, on the persistent partition.
//!
//! A missing file (or a missing ESP) is skipped.

use std::path::{Path, PathBuf};

pub use node_config::{
    merge, parse, parse_mode, valid_hostname, valid_user_name, validate_merged, Config,
    ConfigError, Encoding, Install, K3s, Role, Ssh, Upgrade, User, WriteFile, DEVICE_CONFIG,
    ESP_CONFIG, IMAGE_CONFIG, SUDOERS,
};

use crate::error::Result;
use crate::fsutil::{read_optional, Root};

/// The configuration files, in the order they apply: image, ESP (when
/// `esp`, the mounted ESP, is given), device.
pub fn files(root: &Root, esp: Option<&Path>) -> Vec<PathBuf> {
    let mut v = vec![root.join(IMAGE_CONFIG)];
    v.extend(esp.map(|e| e.join(ESP_CONFIG)));
    v.push(root.join(DEVICE_CONFIG));
    v
}

/// Loads and merges the configuration files of `root` (and of the ESP
/// mounted at `esp`); missing files are skipped. Returns the merged
/// configuration and the files read.
pub fn load(root: &Root, esp: Option<&Path>) -> Result<(Config, Vec<PathBuf>)> {
    let mut merged = Config::default();
    let mut read = Vec::new();
    for path in files(root, esp) {
        if let Some(text) = read_optional(&path)? {
            merged = merge(
                merged,
                parse(&text, &path).map_err(crate::error::Error::msg)?,
            );
            read.push(path);
        }
    }
    validate_merged(&merged).map_err(crate::error::Error::msg)?;
    Ok((merged, read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn p_err(text: &str) -> String {
        parse(text, Path::new("/etc/os-agent/config.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn esp_config_layers_between_image_and_device() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path().join("root"));
        let esp = d.path().join("esp");
        let none = load(&root, Some(&esp)).unwrap();
        assert_eq!(
            none,
            (Config::default(), vec![]),
            "missing files are skipped"
        );
        for (p, text) in [
            (
                root.join(IMAGE_CONFIG),
                "hostname: image\ninstall: {device: auto}\n",
            ),
            (
                esp.join(ESP_CONFIG),
                "hostname: esp\ninstall: {reboot: true}\n",
            ),
        ] {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        let (c, read) = load(&root, Some(&esp)).unwrap();
        assert_eq!(read, [root.join(IMAGE_CONFIG), esp.join(ESP_CONFIG)]);
        assert_eq!(c.hostname.as_deref(), Some("esp"));
        let i = c.install.unwrap();
        assert_eq!((i.device.as_deref(), i.reboot), (Some("auto"), Some(true)));
        let p = root.join(DEVICE_CONFIG);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, "hostname: device\n").unwrap();
        assert_eq!(
            load(&root, Some(&esp)).unwrap().0.hostname.as_deref(),
            Some("device")
        );
        assert_eq!(
            load(&root, None).unwrap().0.hostname.as_deref(),
            Some("device")
        );
        fs::remove_file(&p).unwrap();
        assert_eq!(
            load(&root, None).unwrap().0.hostname.as_deref(),
            Some("image")
        );
        let e = p_err("install: {device: auto, rebot: true}\n");
        assert!(e.contains("rebot"), "{e}");
    }
}
