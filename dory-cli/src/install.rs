//! `dory install`: puts the driver and its configuration into kubelet's
//! plugin directory so that kubelet's watcher sees one change, not a storm
//! of half-written files.
//!
//! Files are staged as dot-files in the plugin directory (kubelet ignores
//! names starting with `.`), then renamed into place: a new driver directory
//! appears whole in one rename; an existing one gets its configuration first
//! and its executable last.

use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Where the driver went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The executable kubelet runs.
    pub executable: PathBuf,
    /// Its configuration.
    pub config: PathBuf,
    /// Whether the configuration was (re)written.
    pub config_written: bool,
}

/// Checks a FlexVolume driver directory name, `vendor~driver`.
pub fn check_driver_name(name: &str) -> Result<(&str, &str), String> {
    let Some((vendor, driver)) = name.split_once('~') else {
        return Err(format!("driver {name:?} must be <vendor>~<driver>, e.g. dory~mock (kubelet reads '~' as '/')"));
    };
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 63
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !valid(vendor) || !valid(driver) {
        return Err(format!(
            "driver {name:?}: vendor and driver must be 1-63 characters of [A-Za-z0-9._-], starting and ending alphanumeric"
        ));
    }
    Ok((vendor, driver))
}

/// Installs `binary` as `<plugin_dir>/<vendor~driver>/<driver>`, with
/// `config` (a JSON file's content) as its `.json`. Without `config` an
/// existing configuration is kept, and a missing one is written as `{}`.
pub fn install(plugin_dir: &Path, name: &str, binary: &Path, config: Option<&str>) -> Result<Installed, String> {
    let (_, driver) = check_driver_name(name)?;
    if let Some(text) = config {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| "the configuration must be a JSON object".to_owned())?;
    }
    fs::create_dir_all(plugin_dir).map_err(|e| format!("cannot create {}: {e}", plugin_dir.display()))?;
    let driver_dir = plugin_dir.join(name);
    let executable = driver_dir.join(driver);
    let config_path = driver_dir.join(format!("{driver}.json"));
    let stage = plugin_dir.join(format!(".dory-install-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir(&stage).map_err(|e| format!("cannot create {}: {e}", stage.display()))?;
    let result = (|| {
        let staged_binary = stage.join(driver);
        fs::copy(binary, &staged_binary).map_err(|e| format!("cannot copy {}: {e}", binary.display()))?;
        fs::set_permissions(&staged_binary, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        File::open(&staged_binary).and_then(|f| f.sync_all()).map_err(|e| e.to_string())?;
        let staged_config = stage.join(format!("{driver}.json"));
        let config_text = match config {
            Some(text) => Some(text.to_owned()),
            None if config_path.exists() => None,
            None => Some("{}\n".to_owned()),
        };
        if let Some(text) = &config_text {
            let mut file = File::create(&staged_config).map_err(|e| e.to_string())?;
            file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| e.to_string())?;
        }
        if !driver_dir.exists() {
            fs::rename(&stage, &driver_dir).map_err(|e| format!("cannot move the driver into place: {e}"))?;
        } else {
            if config_text.is_some() {
                fs::rename(&staged_config, &config_path).map_err(|e| format!("cannot replace the config: {e}"))?;
            }
            fs::rename(&staged_binary, &executable).map_err(|e| format!("cannot replace the driver: {e}"))?;
        }
        Ok(Installed {
            executable: executable.clone(),
            config: config_path.clone(),
            config_written: config_text.is_some(),
        })
    })();
    let _ = fs::remove_dir_all(&stage);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names_are_checked() {
        assert_eq!(check_driver_name("dev.hpe.com~nimble").unwrap(), ("dev.hpe.com", "nimble"));
        assert!(check_driver_name("nimble").is_err());
        assert!(check_driver_name("a~").is_err());
        assert!(check_driver_name("a~b~c").is_err());
        assert!(check_driver_name("-a~b").is_err());
    }

    #[test]
    fn installs_then_upgrades_keeping_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("dory-bin");
        fs::write(&binary, "v1").unwrap();
        let plugins = dir.path().join("exec");
        let installed = install(&plugins, "dory~mock", &binary, Some(r#"{"backend":"mock"}"#)).unwrap();
        assert_eq!(installed.executable, plugins.join("dory~mock/mock"));
        assert_eq!(fs::read_to_string(&installed.config).unwrap(), r#"{"backend":"mock"}"#);
        let mode = fs::metadata(&installed.executable).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);

        fs::write(&binary, "v2").unwrap();
        let again = install(&plugins, "dory~mock", &binary, None).unwrap();
        assert!(!again.config_written);
        assert_eq!(fs::read_to_string(&again.executable).unwrap(), "v2");
        assert_eq!(fs::read_to_string(&again.config).unwrap(), r#"{"backend":"mock"}"#);
        let leftovers: Vec<_> = fs::read_dir(&plugins).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["dory~mock"], "no staging files left behind");
        assert!(install(&plugins, "dory~mock", &binary, Some("[]")).is_err());
    }
}
