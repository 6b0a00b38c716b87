//! Backends by name: each backend crate registers a constructor, a
//! configuration names one.
//!
//! Registration uses [`inventory`], so a backend crate only has to be linked
//! into a binary. A crate that is only listed in `Cargo.toml` is not linked:
//! binaries write `use dory_backend_docker as _;` for each backend they ship.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::backend::VolumeBackend;
use crate::error::{Error, Result};
use crate::volume::CreateOptions;

/// The backend used when a configuration names none.
pub const DEFAULT_BACKEND: &str = "docker";

/// The configuration key that names the backend.
pub const BACKEND_KEY: &str = "backend";

/// A backend's constructor, registered under a name.
pub struct BackendRegistration {
    /// The name a configuration uses (`"backend": "<name>"`).
    pub name: &'static str,
    /// One line for listings and `--help`.
    pub summary: &'static str,
    /// Builds the backend from the configuration. Must be cheap and must not
    /// contact the storage: callers like `dory init` construct and never call.
    pub build: fn(&BackendConfig) -> Result<Arc<dyn VolumeBackend>>,
}

inventory::collect!(BackendRegistration);

/// Registers a backend under a name, from any crate.
///
/// ```
/// use std::sync::Arc;
/// use dory_core::{BackendConfig, BackendRegistration, Result, VolumeBackend};
///
/// fn build(config: &BackendConfig) -> Result<Arc<dyn VolumeBackend>> {
///     // Read your keys with config.string("myKey")?, then construct.
///     # Err(dory_core::Error::Config { key: "x".into(), reason: "demo".into() })
/// }
///
/// dory_core::register_backend!(BackendRegistration {
///     name: "my-array",
///     summary: "volumes on My Array",
///     build,
/// });
///
/// assert!(dory_core::registry::registered_names().contains(&"my-array"));
/// ```
#[macro_export]
macro_rules! register_backend {
    ($registration:expr) => {
        $crate::__inventory::submit! { $registration }
    };
}

/// Every registered backend, sorted by name.
pub fn registered() -> Vec<&'static BackendRegistration> {
    let mut all: Vec<_> = inventory::iter::<BackendRegistration>.into_iter().collect();
    all.sort_by_key(|r| r.name);
    all
}

/// The names of every registered backend, sorted.
pub fn registered_names() -> Vec<&'static str> {
    registered().into_iter().map(|r| r.name).collect()
}

/// Builds the backend the configuration names.
pub fn build_backend(config: &BackendConfig) -> Result<Arc<dyn VolumeBackend>> {
    let registration = registered().into_iter().find(|r| r.name == config.backend()).ok_or_else(|| {
        Error::UnknownBackend { name: config.backend().to_owned(), known: registered_names().join(", ") }
    })?;
    (registration.build)(config)
}

/// A backend's name plus the configuration keys it reads.
///
/// The keys are the whole JSON object of the configuration file (for the
/// driver, `<driver>.json`), so backends can keep the original Dory's key
/// names. Typed getters turn a wrongly typed value into an error that names
/// the key instead of silently using a default.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConfig {
    backend: String,
    settings: Map<String, Value>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self::named(DEFAULT_BACKEND)
    }
}

impl BackendConfig {
    /// A configuration with no settings for the backend `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self { backend: name.into(), settings: Map::new() }
    }

    /// Reads a configuration object; `backend` defaults to [`DEFAULT_BACKEND`].
    pub fn from_json(value: Value) -> Result<Self> {
        let Value::Object(settings) = value else {
            return Err(Error::Config {
                key: "(top level)".into(),
                reason: format!("expected a JSON object, found {}", json_kind(&value)),
            });
        };
        let backend = match settings.get(BACKEND_KEY) {
            None | Some(Value::Null) => DEFAULT_BACKEND.to_owned(),
            Some(Value::String(name)) if !name.trim().is_empty() => name.trim().to_owned(),
            Some(other) => {
                return Err(Error::Config {
                    key: BACKEND_KEY.into(),
                    reason: format!("expected a backend name, found {}", json_kind(other)),
                });
            }
        };
        Ok(Self { backend, settings })
    }

    /// Sets one setting, for building configurations in code.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.settings.insert(key.to_owned(), value.into());
        self
    }

    /// Adds settings, for a configuration whose `backend` key was unusable.
    pub fn with_settings(mut self, settings: impl IntoIterator<Item = (String, Value)>) -> Self {
        self.settings.extend(settings);
        self
    }

    /// The backend's registry name.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Every setting, as written.
    pub fn settings(&self) -> &Map<String, Value> {
        &self.settings
    }

    /// A string setting; absent or `null` is `None`, any other type an error.
    pub fn string(&self, key: &str) -> Result<Option<String>> {
        match self.settings.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(type_error(key, "a string", other)),
        }
    }

    /// A non-negative number setting; a number written as a string is
    /// accepted, a fraction or negative value is an error.
    pub fn number(&self, key: &str) -> Result<Option<u64>> {
        match self.settings.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| Error::Config {
                key: key.into(),
                reason: format!("expected a whole number >= 0, found {n}"),
            }),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| Error::Config {
                key: key.into(),
                reason: format!("expected a whole number >= 0, found {s:?}"),
            }),
            Some(other) => Err(type_error(key, "a whole number", other)),
        }
    }

    /// A boolean: JSON `true`/`false`, or a string Go's `strconv.ParseBool`
    /// accepts (`"1"`, `"t"`, `"True"`, `"0"`, `"FALSE"`, ...), as the
    /// original Dory's files hold.
    pub fn go_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.settings.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match s.as_str() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Some(true)),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Some(false)),
                _ => Err(type_error(key, "true or false", &Value::String(s.clone()))),
            },
            Some(other) => Err(type_error(key, "true or false", other)),
        }
    }

    /// A string map of options: an object, or the original's list of
    /// one-key objects; values may be strings, numbers or booleans.
    pub fn options(&self, key: &str) -> Result<Option<CreateOptions>> {
        let pairs: Vec<(&String, &Value)> = match self.settings.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(map)) => map.iter().collect(),
            Some(Value::Array(items)) => {
                let mut pairs = Vec::new();
                for item in items {
                    match item.as_object() {
                        Some(map) if map.len() == 1 => pairs.extend(map.iter()),
                        _ => return Err(type_error(key, "objects with one key each", item)),
                    }
                }
                pairs
            }
            Some(other) => return Err(type_error(key, "an object or a list of one-key objects", other)),
        };
        let mut options = CreateOptions::new();
        for (name, value) in pairs {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(Error::Config {
                        key: key.into(),
                        reason: format!(
                            "option {name:?} must be a string, number or boolean, found {}",
                            json_kind(other)
                        ),
                    });
                }
            };
            options.insert(name.clone(), text);
        }
        Ok(Some(options))
    }

    /// A list of strings; absent or `null` is `None`.
    pub fn string_list(&self, key: &str) -> Result<Option<Vec<String>>> {
        match self.settings.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(type_error(key, "a list of strings", other)),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(other) => Err(type_error(key, "a list of strings", other)),
        }
    }
}

fn type_error(key: &str, expected: &str, found: &Value) -> Error {
    Error::Config { key: key.into(), reason: format!("expected {expected}, found {}", json_kind(found)) }
}

fn json_kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn backend_defaults_to_docker() {
        let config = BackendConfig::from_json(json!({"logDebug": true})).unwrap();
        assert_eq!(config.backend(), "docker");
        let config = BackendConfig::from_json(json!({"backend": " mock "})).unwrap();
        assert_eq!(config.backend(), "mock");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = BackendConfig::from_json(json!({"backend": 3})).unwrap_err();
        assert_eq!(err.to_string(), "invalid value for \"backend\": expected a backend name, found number 3");
        let err = BackendConfig::from_json(json!([1])).unwrap_err();
        assert!(err.to_string().contains("expected a JSON object"), "{err}");

        let config = BackendConfig::named("x")
            .with("t", json!(1.5))
            .with("s", json!(true))
            .with("l", json!(["a", 2]))
            .with("n", json!("42"));
        assert!(config.number("t").unwrap_err().to_string().contains("\"t\""));
        assert!(config.string("s").unwrap_err().to_string().contains("boolean true"));
        assert!(config.string_list("l").unwrap_err().to_string().contains("number 2"));
        assert_eq!(config.number("n").unwrap(), Some(42));
        assert_eq!(config.number("absent").unwrap(), None);
    }

    #[test]
    fn unknown_backend_lists_known_ones() {
        let err = build_backend(&BackendConfig::named("nope")).err().unwrap();
        assert!(err.to_string().starts_with("unknown backend \"nope\"; known backends:"), "{err}");
    }
}
