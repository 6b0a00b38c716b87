//! Domain types: validated names and IDs, create options, volume facts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The longest volume name accepted, in bytes (a file name's limit on Linux).
pub const MAX_VOLUME_NAME_BYTES: usize = 255;

/// The longest mount ID accepted, in bytes.
pub const MAX_MOUNT_ID_BYTES: usize = 255;

/// A volume's name as a storage plugin knows it.
///
/// Valid names are non-empty, at most [`MAX_VOLUME_NAME_BYTES`] long and hold
/// no `/` and no NUL, so a name can never escape a directory it is joined to.
///
/// ```
/// use dory_core::VolumeName;
///
/// assert_eq!(VolumeName::new("pvc-42").unwrap().as_str(), "pvc-42");
/// let err = VolumeName::new("../etc").unwrap_err();
/// assert_eq!(err.to_string(), "invalid volume name \"../etc\": it contains '/'");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeName(String);

impl VolumeName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_VOLUME_NAME_BYTES {
            Some("it is longer than 255 bytes")
        } else if name.contains('/') {
            Some("it contains '/'")
        } else if name.contains('\0') {
            Some("it contains a NUL byte")
        } else if name == "." || name == ".." {
            Some("it is a relative path component")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidVolumeName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for VolumeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Identifies one user of a mounted volume (dockerd: one container mount
/// point; Dory: one pod). The same ID may mount the same volume more than
/// once; each mount is undone by one unmount with the same ID.
///
/// An empty ID is allowed: daemons before Docker 1.12 sent none.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MountId(String);

impl MountId {
    /// Validates `id`: at most [`MAX_MOUNT_ID_BYTES`] long, no NUL.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.len() > MAX_MOUNT_ID_BYTES {
            return Err(Error::InvalidMountId { id, reason: "it is longer than 255 bytes" });
        }
        if id.contains('\0') {
            return Err(Error::InvalidMountId { id, reason: "it contains a NUL byte" });
        }
        Ok(Self(id))
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The option doryd adds to the `flexVolume` options of every PV it
/// provisions (value: the provisioner's name). The volume exists where it was
/// provisioned: a driver strips this option before Create and never creates
/// a volume that carries it.
pub const PROVISIONED_OPTION: &str = "dory.io/provisioned-by";

/// Options passed when creating a volume: a string map, as in the Docker API.
pub type CreateOptions = BTreeMap<String, String>;

/// Words that mark an option's value as a secret, matched in the key
/// without regard to case.
const SECRET_WORDS: [&str; 8] = ["secret", "password", "passwd", "passphrase", "token", "credential", "auth", "key"];

/// True when `key` names a secret-looking value (`password`, `Passphrase`,
/// `AUTH_TOKEN`, `credentials`, `kubernetes.io/secret/...`), in any case.
pub fn is_secret_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| lower.contains(word))
}

/// `options` as JSON for a log line, with the values of secret-looking keys
/// (`password`, `kubernetes.io/secret/...`, `apiToken`, ...) replaced.
pub fn redacted_options(options: &CreateOptions) -> String {
    let shown: BTreeMap<&str, &str> = options
        .iter()
        .map(|(key, value)| (key.as_str(), if is_secret_key(key) { "<redacted>" } else { value.as_str() }))
        .collect();
    serde_json::to_string(&shown).unwrap_or_default()
}

/// What a backend knows about one volume.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VolumeInfo {
    /// The volume's name.
    pub name: String,
    /// Where the volume is (or will be) reachable on the host, if known.
    pub mountpoint: Option<PathBuf>,
    /// When it was created, as RFC 3339 text, if the backend says.
    pub created_at: Option<String>,
    /// Backend-specific facts, shown to users as they are.
    pub status: BTreeMap<String, serde_json::Value>,
}

/// Whether a volume is visible on one host or on every host of a cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Visible only on the host that created it.
    #[default]
    Local,
    /// One volume for the whole cluster.
    Global,
}

impl Scope {
    /// Reads a scope as dockerd does: case-insensitive, and anything other
    /// than `global` is `local`.
    pub fn parse_lenient(text: &str) -> Self {
        if text.eq_ignore_ascii_case("global") { Self::Global } else { Self::Local }
    }

    /// The wire spelling, `local` or `global`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Global => "global",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a backend can do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The volumes' scope.
    pub scope: Scope,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_auth_and_credentials_are_redacted_in_any_case() {
        let options = CreateOptions::from([
            ("PASSPHRASE".to_owned(), "p1".to_owned()),
            ("luksPassphrase".to_owned(), "p2".to_owned()),
            ("Auth".to_owned(), "p3".to_owned()),
            ("basicAuthHeader".to_owned(), "p4".to_owned()),
            ("Credentials".to_owned(), "p5".to_owned()),
            ("size".to_owned(), "10".to_owned()),
        ]);
        let shown = redacted_options(&options);
        for value in ["p1", "p2", "p3", "p4", "p5"] {
            assert!(!shown.contains(value), "{value} shown in {shown}");
        }
        assert!(shown.contains(r#""size":"10""#), "{shown}");
    }

    #[test]
    fn secret_looking_options_are_redacted_for_logs() {
        let options = CreateOptions::from([
            ("size".to_owned(), "10".to_owned()),
            ("adminPassword".to_owned(), "hunter2".to_owned()),
            ("kubernetes.io/secret/token".to_owned(), "abc".to_owned()),
            ("encryptionKey".to_owned(), "k".to_owned()),
        ]);
        let shown = redacted_options(&options);
        assert_eq!(
            shown,
            r#"{"adminPassword":"<redacted>","encryptionKey":"<redacted>","kubernetes.io/secret/token":"<redacted>","size":"10"}"#
        );
    }

    #[test]
    fn volume_name_rules() {
        assert!(VolumeName::new("pvc-1234").is_ok());
        assert!(VolumeName::new("a".repeat(255)).is_ok());
        for bad in ["", "a/b", "/", "a\0b", ".", ".."] {
            let err = VolumeName::new(bad).unwrap_err();
            assert!(err.to_string().contains("invalid volume name"), "{err}");
        }
        let err = VolumeName::new("a".repeat(256)).unwrap_err();
        assert!(err.to_string().contains("longer than 255"), "{err}");
    }

    #[test]
    fn mount_id_allows_empty_but_not_nul() {
        assert_eq!(MountId::new("").unwrap().as_str(), "");
        assert!(MountId::new("c0ffee").is_ok());
        assert!(MountId::new("a\0").is_err());
        assert!(MountId::new("x".repeat(256)).is_err());
    }

    #[test]
    fn scope_is_lenient_like_dockerd() {
        assert_eq!(Scope::parse_lenient("GLOBAL"), Scope::Global);
        assert_eq!(Scope::parse_lenient("global"), Scope::Global);
        assert_eq!(Scope::parse_lenient(""), Scope::Local);
        assert_eq!(Scope::parse_lenient("cluster"), Scope::Local);
    }
}
