//! What kubelet passes to `mount`: the options JSON and the pod volume
//! directory, and what the driver derives from them.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use dory_core::{CreateOptions, MountId, VolumeName};
use serde_json::Value;

use crate::error::DriverError;

/// Prefix of the keys kubelet adds.
pub const K8S_PREFIX: &str = "kubernetes.io";
/// Prefix of base64-encoded secret values.
pub const SECRET_PREFIX: &str = "kubernetes.io/secret/";
/// The PV name, or the pod volume name for inline volumes.
pub const PV_OR_VOLUME_NAME: &str = "kubernetes.io/pvOrVolumeName";
/// `ro` or `rw`.
pub const READ_WRITE: &str = "kubernetes.io/readwrite";
/// The pod's UID.
pub const POD_UID: &str = "kubernetes.io/pod.uid";
/// fsGroup, current key.
pub const FS_GROUP: &str = "kubernetes.io/mounterArgs.FsGroup";
/// fsGroup, key of kubelets up to 1.16.
pub const FS_GROUP_LEGACY: &str = "kubernetes.io/fsGroup";

/// The options of one `mount` call, all values as strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountRequest {
    options: BTreeMap<String, String>,
}

impl MountRequest {
    /// Parses kubelet's JSON object. Non-string values (possible in
    /// hand-written specs) are kept as their JSON text.
    pub fn parse(json: &str) -> Result<Self, DriverError> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| DriverError::BadOptions { reason: format!("the options are not valid JSON: {e}") })?;
        let Value::Object(map) = value else {
            return Err(DriverError::BadOptions { reason: "the options must be a JSON object".into() });
        };
        let options = map
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, text)
            })
            .collect();
        Ok(Self { options })
    }

    /// The `name` option, matched case-insensitively like the original.
    fn explicit_name(&self) -> Option<&str> {
        self.options.iter().find(|(k, _)| k.eq_ignore_ascii_case("name")).map(|(_, v)| v.as_str())
    }

    /// The volume's name: the `name` option, else the PV or pod volume name.
    pub fn volume_name(&self) -> Result<VolumeName, DriverError> {
        let name = self
            .explicit_name()
            .filter(|n| !n.is_empty())
            .or_else(|| self.options.get(PV_OR_VOLUME_NAME).map(String::as_str))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| DriverError::BadOptions {
                reason: format!("no volume name: set the \"name\" option or pass {PV_OR_VOLUME_NAME:?}"),
            })?;
        Ok(VolumeName::new(name)?)
    }

    /// True when kubelet asks for a read-only mount.
    pub fn read_only(&self) -> bool {
        self.options.get(READ_WRITE).is_some_and(|v| v == "ro")
    }

    /// The provisioner that made this volume, when the options come from a
    /// PV doryd provisioned (its [`dory_core::PROVISIONED_OPTION`]).
    pub fn provisioned_by(&self) -> Option<&str> {
        self.options.get(dory_core::PROVISIONED_OPTION).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// The pod UID kubelet passed, if any.
    pub fn pod_uid(&self) -> Option<&str> {
        self.options.get(POD_UID).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// The pod's fsGroup, from either key kubelet has used.
    pub fn fs_group(&self) -> Result<Option<u32>, DriverError> {
        let Some((key, value)) = [FS_GROUP, FS_GROUP_LEGACY]
            .into_iter()
            .find_map(|key| self.options.get(key).filter(|v| !v.is_empty()).map(|v| (key, v)))
        else {
            return Ok(None);
        };
        value
            .parse()
            .map(Some)
            .map_err(|_| DriverError::BadOptions { reason: format!("{key} must be a group ID, found {value:?}") })
    }

    /// Secrets kubelet passed, base64-decoded, by key.
    pub fn secrets(&self) -> Result<BTreeMap<String, String>, DriverError> {
        self.options
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(SECRET_PREFIX).map(|name| (name, v)))
            .map(|(name, encoded)| {
                let bytes = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|e| {
                    DriverError::BadOptions { reason: format!("secret {name:?} is not valid base64: {e}") }
                })?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| DriverError::BadOptions { reason: format!("secret {name:?} is not UTF-8 text") })?;
                Ok((name.to_owned(), text))
            })
            .collect()
    }

    /// The options for Create: the request minus `name`, minus
    /// `kubernetes.io/*` when `strip_k8s`; decoded secrets under their own
    /// key; then `defaults` for keys still missing.
    pub fn create_options(&self, strip_k8s: bool, defaults: &CreateOptions) -> Result<CreateOptions, DriverError> {
        let mut options: CreateOptions = self
            .options
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("name"))
            .filter(|(k, _)| !k.starts_with(SECRET_PREFIX))
            .filter(|(k, _)| k.as_str() != dory_core::PROVISIONED_OPTION)
            .filter(|(k, _)| !(strip_k8s && k.starts_with(K8S_PREFIX)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, value) in self.secrets()? {
            options.entry(name).or_insert(value);
        }
        for (key, value) in defaults {
            options.entry(key.clone()).or_insert_with(|| value.clone());
        }
        Ok(options)
    }

    /// The options for logs: secret values (`kubernetes.io/secret/*` and
    /// secret-looking keys) replaced.
    pub fn redacted(&self) -> String {
        dory_core::redacted_options(&self.options)
    }
}

pub use dory_mount::pod_uid_from_dir;

/// The mount ID for a pod volume directory: the pod UID (from the path,
/// else the one kubelet passed) plus a short hash of the directory, so that
/// one pod mounting the same volume through two volume entries holds two
/// mounts, and a plugin that keeps a set of IDs does not detach on the
/// first Unmount. Derived from the path alone, so `unmount` finds it again.
pub fn mount_id(dir: &Path, request: Option<&MountRequest>) -> Result<MountId, DriverError> {
    let uid = pod_uid_from_dir(dir)
        .or_else(|| request.and_then(|r| r.pod_uid()).map(str::to_owned))
        .ok_or_else(|| DriverError::NoPodUid { dir: dir.to_path_buf() })?;
    let hash = dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3));
    Ok(MountId::new(format!("{uid}-{:08x}", hash as u32))?)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn request(json: &str) -> MountRequest {
        MountRequest::parse(json).unwrap()
    }

    #[test]
    fn name_comes_from_name_then_pv_name() {
        let r = request(r#"{"Name":"explicit","kubernetes.io/pvOrVolumeName":"pv1"}"#);
        assert_eq!(r.volume_name().unwrap().as_str(), "explicit");
        let r = request(r#"{"kubernetes.io/pvOrVolumeName":"pv1"}"#);
        assert_eq!(r.volume_name().unwrap().as_str(), "pv1");
        let err = request(r#"{"kubernetes.io/fsType":""}"#).volume_name().unwrap_err();
        assert!(err.to_string().contains("no volume name"), "{err}");
        let err = request(r#"{"name":"a/b"}"#).volume_name().unwrap_err();
        assert!(err.to_string().contains("contains '/'"), "{err}");
    }

    #[test]
    fn create_options_follow_the_rules() {
        let r = request(
            r#"{"name":"v","size":"10","kubernetes.io/fsType":"ext4","kubernetes.io/secret/password":"czNjcjN0",
                "kubernetes.io/readwrite":"rw","mountConflictDelay":"5"}"#,
        );
        let defaults: CreateOptions = [("mountConflictDelay", "30"), ("manager", "k8s")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let stripped = r.create_options(true, &defaults).unwrap();
        let expected: CreateOptions =
            [("size", "10"), ("password", "s3cr3t"), ("mountConflictDelay", "5"), ("manager", "k8s")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(stripped, expected);
        let kept = r.create_options(false, &CreateOptions::new()).unwrap();
        assert_eq!(kept["kubernetes.io/fsType"], "ext4");
        assert!(!kept.contains_key("name") && !kept.contains_key("kubernetes.io/secret/password"));
    }

    #[test]
    fn secrets_are_decoded_and_never_shown() {
        let r = request(r#"{"kubernetes.io/secret/token":"aGVsbG8=","kubernetes.io/secret/bad":"***"}"#);
        let err = r.secrets().unwrap_err();
        assert!(err.to_string().contains("secret \"bad\" is not valid base64"), "{err}");
        assert!(!r.redacted().contains("aGVsbG8="), "{}", r.redacted());
        assert!(r.redacted().contains("<redacted>"));
    }

    #[test]
    fn read_only_and_fs_group() {
        assert!(request(r#"{"kubernetes.io/readwrite":"ro"}"#).read_only());
        assert!(!request(r#"{"kubernetes.io/readwrite":"rw"}"#).read_only());
        assert_eq!(request(r#"{"kubernetes.io/mounterArgs.FsGroup":"2000"}"#).fs_group().unwrap(), Some(2000));
        assert_eq!(request(r#"{"kubernetes.io/fsGroup":"3000"}"#).fs_group().unwrap(), Some(3000));
        assert!(request(r#"{"kubernetes.io/fsGroup":"staff"}"#).fs_group().is_err());
        assert_eq!(request("{}").fs_group().unwrap(), None);
    }

    #[test]
    fn bad_json_is_explained() {
        assert!(MountRequest::parse("not json").unwrap_err().to_string().contains("not valid JSON"));
        assert!(MountRequest::parse("[1]").unwrap_err().to_string().contains("must be a JSON object"));
    }

    #[test]
    fn pod_uid_from_any_kubelet_root() {
        for root in ["/var/lib/kubelet", "/data/k8s", "/var/lib/origin/openshift.local.volumes"] {
            let dir = PathBuf::from(format!("{root}/pods/0e4a-11/volumes/dory~mock/pv-1"));
            assert_eq!(pod_uid_from_dir(&dir).as_deref(), Some("0e4a-11"), "{root}");
        }
        assert_eq!(pod_uid_from_dir(Path::new("/mnt/somewhere")), None);
        let r = request(r#"{"kubernetes.io/pod.uid":"from-json"}"#);
        assert!(mount_id(Path::new("/mnt/x"), Some(&r)).unwrap().as_str().starts_with("from-json-"));
        assert!(mount_id(Path::new("/mnt/x"), None).unwrap_err().to_string().contains("/mnt/x"));
    }

    #[test]
    fn two_volume_entries_of_one_pod_get_two_mount_ids() {
        let a = Path::new("/var/lib/kubelet/pods/uid-1/volumes/dory~x/data");
        let b = Path::new("/var/lib/kubelet/pods/uid-1/volumes/dory~x/data-again");
        let (id_a, id_b) = (mount_id(a, None).unwrap(), mount_id(b, None).unwrap());
        assert_ne!(id_a, id_b);
        assert!(id_a.as_str().starts_with("uid-1-") && id_a.as_str().len() == "uid-1-".len() + 8, "{id_a}");
        assert_eq!(mount_id(a, None).unwrap(), id_a, "stable: unmount derives it again from the path");
    }
}
