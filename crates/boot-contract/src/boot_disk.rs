//! The disk the node booted from. GRUB names the ESP it started from by
//! its partition UUID on the kernel command line
//! ([`crate::boot_env::CMDLINE_ESP`]); os-init finds the disk holding that
//! partition, takes the root slot and `persist` from it and from no other
//! disk, and records what it found in [`RECORD`] (on `/run`, for this boot
//! only). os-agent reads the record instead of looking for partitions by
//! name, so a second disk with the same names (a USB stick written from the
//! same image) is never used.
//!
//! On a disk's first boot os-init may give it its own identity (new GUIDs),
//! after which the command line's UUID is the old one: the record holds
//! the current one.

use crate::gpt::Guid;

/// Where os-init writes the record: `key=value` lines.
pub const RECORD: &str = "/run/os/boot-disk";

/// What os-init found: device paths of this boot and the disk's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The whole disk, `/dev/vda`.
    pub disk: String,
    /// Its GPT's disk GUID (after any identity change this boot).
    pub disk_guid: Guid,
    /// The ESP's partition GUID (after any identity change this boot).
    pub esp_partuuid: Guid,
    /// Partition device paths.
    pub esp: String,
    pub root_a: String,
    pub root_b: String,
    /// None when the disk has no `persist` partition.
    pub persist: Option<String>,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{RECORD}: {0}")]
pub struct RecordError(pub String);

impl Record {
    pub fn render(&self) -> String {
        let mut s = format!(
            "disk={}\ndisk_guid={}\nesp_partuuid={}\nesp={}\nroot_a={}\nroot_b={}\n",
            self.disk, self.disk_guid, self.esp_partuuid, self.esp, self.root_a, self.root_b
        );
        if let Some(p) = &self.persist {
            s.push_str(&format!("persist={p}\n"));
        }
        s
    }

    pub fn parse(text: &str) -> Result<Record, RecordError> {
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let need = |k: &str| -> Result<String, RecordError> {
            let v = field(k).ok_or_else(|| RecordError(format!("no {k}=")))?;
            if !v.starts_with("/dev/") {
                return Err(RecordError(format!("{k}={v}: expected a /dev/ path")));
            }
            Ok(v.to_string())
        };
        let guid = |k: &str| -> Result<Guid, RecordError> {
            let v = field(k).ok_or_else(|| RecordError(format!("no {k}=")))?;
            v.parse().map_err(|e| RecordError(format!("{k}=: {e}")))
        };
        let persist = match field("persist") {
            Some(_) => Some(need("persist")?),
            None => None,
        };
        Ok(Record {
            disk: need("disk")?,
            disk_guid: guid("disk_guid")?,
            esp_partuuid: guid("esp_partuuid")?,
            esp: need("esp")?,
            root_a: need("root_a")?,
            root_b: need("root_b")?,
            persist,
        })
    }

    /// The device of slot `a` or `b`.
    pub fn slot(&self, slot: &str) -> Option<&str> {
        match slot {
            "a" => Some(&self.root_a),
            "b" => Some(&self.root_b),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let r = Record {
            disk: "/dev/vdb".into(),
            disk_guid: Guid::random_v4([1; 16]),
            esp_partuuid: Guid::random_v4([2; 16]),
            esp: "/dev/vdb2".into(),
            root_a: "/dev/vdb3".into(),
            root_b: "/dev/vdb4".into(),
            persist: Some("/dev/vdb5".into()),
        };
        assert_eq!(Record::parse(&r.render()).unwrap(), r);
        assert_eq!(r.slot("b"), Some("/dev/vdb4"));
        assert_eq!(r.slot("live"), None);
        let none = Record {
            persist: None,
            ..r.clone()
        };
        assert_eq!(Record::parse(&none.render()).unwrap(), none);
        for (bad, want) in [
            (r.render().replace("disk=/dev/vdb\n", ""), "no disk="),
            (
                r.render().replace("esp=/dev/vdb2", "esp=vdb2"),
                "expected a /dev/ path",
            ),
            (
                r.render().replace(&r.esp_partuuid.to_string(), "nonsense"),
                "esp_partuuid=: bad GUID",
            ),
        ] {
            let e = Record::parse(&bad).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
