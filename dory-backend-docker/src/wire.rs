//! The Docker Volume Plugin wire format: endpoint names, request bodies, and
//! tolerant decoding of replies.
//!
//! Decoding follows Go's `encoding/json` as dockerd uses it: keys are matched
//! case-insensitively, unknown fields are ignored and missing fields are
//! empty. Everything Docker-shaped stays in this module.

use std::path::PathBuf;

use dory_core::{CreateOptions, Operation, Scope, VolumeInfo};
use serde_json::{Map, Value, json};

/// The media type dockerd sends in `Accept` (and we send as `Content-Type`).
pub const PLUGIN_MEDIA_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The `Host` dockerd uses for plugins on unix sockets.
pub const PLUGIN_HOST: &str = "plugin.moby.localhost";

/// One endpoint of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `/Plugin.Activate`: the handshake.
    Activate,
    /// A `/VolumeDriver.*` endpoint.
    Volume(Operation),
}

impl Method {
    /// The method's name as dockerd prints it in errors, e.g. `VolumeDriver.Mount`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Activate => "Plugin.Activate",
            Self::Volume(op) => match op {
                Operation::Create => "VolumeDriver.Create",
                Operation::Remove => "VolumeDriver.Remove",
                Operation::Mount => "VolumeDriver.Mount",
                Operation::Unmount => "VolumeDriver.Unmount",
                Operation::Path => "VolumeDriver.Path",
                Operation::Get => "VolumeDriver.Get",
                Operation::List => "VolumeDriver.List",
                Operation::Capabilities => "VolumeDriver.Capabilities",
            },
        }
    }

    /// The URL path, e.g. `/VolumeDriver.Mount`.
    pub fn path(self) -> String {
        format!("/{}", self.name())
    }

    /// The method served at a URL path, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        let name = path.strip_prefix('/')?;
        if name == "Plugin.Activate" {
            return Some(Self::Activate);
        }
        Operation::ALL.into_iter().map(Self::Volume).find(|m| m.name() == name)
    }

    /// Create and Mount may take long (dockerd allows them 2 minutes).
    pub fn is_long(self) -> bool {
        matches!(self, Self::Volume(Operation::Create | Operation::Mount))
    }
}

/// A request body as dockerd encodes it (Go's encoder ends it with `\n`).
pub fn request_body(method: Method, name: Option<&str>, id: Option<&str>, options: Option<&CreateOptions>) -> Vec<u8> {
    if method == Method::Activate {
        return Vec::new();
    }
    let mut object = Map::new();
    if let Some(name) = name {
        object.insert("Name".into(), json!(name));
    }
    if let Some(options) = options {
        object.insert("Opts".into(), json!(options));
    }
    if let Some(id) = id {
        object.insert("ID".into(), json!(id));
    }
    let mut body = serde_json::to_vec(&Value::Object(object)).unwrap_or_default();
    body.push(b'\n');
    body
}

/// Looks a key up the way Go does: the exact key first, then ignoring case.
pub fn field<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    object
        .get(key)
        .or_else(|| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
        .filter(|v| !v.is_null())
}

/// A string field; `None` when absent, null or empty.
pub fn string_field(value: &Value, key: &str) -> Option<String> {
    match field(value, key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::String(_) => None,
        other => Some(other.to_string()),
    }
}

/// The plugin's `Err`, if it reported one.
pub fn reported_error(reply: &Value) -> Option<String> {
    string_field(reply, "Err")
}

/// `Mountpoint` of a Mount or Path reply.
pub fn mountpoint(reply: &Value) -> Option<PathBuf> {
    string_field(reply, "Mountpoint").map(PathBuf::from)
}

/// The `Implements` list of an Activate reply.
pub fn implements(reply: &Value) -> Vec<String> {
    match field(reply, "Implements") {
        Some(Value::Array(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// The scope of a Capabilities reply (missing or unknown is `local`).
pub fn scope(reply: &Value) -> Scope {
    field(reply, "Capabilities")
        .and_then(|caps| string_field(caps, "Scope"))
        .map(|s| Scope::parse_lenient(&s))
        .unwrap_or_default()
}

/// One `Volume` object; `fallback_name` fills a missing `Name`.
pub fn volume(value: &Value, fallback_name: Option<&str>) -> Option<VolumeInfo> {
    if !value.is_object() {
        return None;
    }
    let name = string_field(value, "Name").or_else(|| fallback_name.map(str::to_owned))?;
    let status = match field(value, "Status") {
        Some(Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => Default::default(),
    };
    Some(VolumeInfo {
        name,
        mountpoint: string_field(value, "Mountpoint").map(PathBuf::from),
        created_at: match field(value, "CreatedAt") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        },
        status,
    })
}

/// The `Volumes` of a List reply; entries without a name are skipped.
pub fn volumes(reply: &Value) -> Vec<VolumeInfo> {
    match field(reply, "Volumes") {
        Some(Value::Array(items)) => items.iter().filter_map(|v| volume(v, None)).collect(),
        _ => Vec::new(),
    }
}

/// Encodes a volume for a Get or List reply, leaving out what is unknown.
pub fn encode_volume(info: &VolumeInfo) -> Value {
    let mut object = Map::new();
    object.insert("Name".into(), json!(info.name));
    if let Some(mountpoint) = &info.mountpoint {
        object.insert("Mountpoint".into(), json!(mountpoint));
    }
    if let Some(created_at) = &info.created_at {
        object.insert("CreatedAt".into(), json!(created_at));
    }
    if !info.status.is_empty() {
        object.insert("Status".into(), json!(info.status));
    }
    Value::Object(object)
}

/// Create options from a request's `Opts`: `null` or missing is empty, and
/// non-string values are kept as their JSON text.
pub fn options(request: &Value) -> Result<CreateOptions, String> {
    match field(request, "Opts") {
        None => Ok(CreateOptions::new()),
        Some(Value::Object(map)) => Ok(map
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()),
        Some(other) => Err(format!("\"Opts\" must be an object, found {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_match_dockerd() {
        let opts = CreateOptions::new();
        let body = request_body(Method::Volume(Operation::Create), Some("v"), None, Some(&opts));
        assert_eq!(body, b"{\"Name\":\"v\",\"Opts\":{}}\n");
        let body = request_body(Method::Volume(Operation::Mount), Some("v"), Some("id1"), None);
        assert_eq!(body, b"{\"ID\":\"id1\",\"Name\":\"v\"}\n");
        assert_eq!(request_body(Method::Volume(Operation::List), None, None, None), b"{}\n");
        assert!(request_body(Method::Activate, None, None, None).is_empty());
    }

    #[test]
    fn keys_match_case_insensitively_and_unknown_fields_are_ignored() {
        let reply = json!({"volume": {"name": "v", "MOUNTPOINT": "/p", "extra": 1}, "err": ""});
        let vol = volume(field(&reply, "Volume").unwrap(), None).unwrap();
        assert_eq!(vol.name, "v");
        assert_eq!(vol.mountpoint, Some(PathBuf::from("/p")));
        assert_eq!(reported_error(&reply), None);
        assert_eq!(reported_error(&json!({"ERR": "boom"})), Some("boom".into()));
    }

    #[test]
    fn created_at_is_lenient() {
        let v = volume(&json!({"Name": "v", "CreatedAt": ""}), None).unwrap();
        assert_eq!(v.created_at, None);
        let v = volume(&json!({"Name": "v", "CreatedAt": 5}), None).unwrap();
        assert_eq!(v.created_at, None);
        let v = volume(&json!({"Name": "v", "CreatedAt": "2026-11-22T01:00:00Z"}), None).unwrap();
        assert_eq!(v.created_at.as_deref(), Some("2026-11-22T01:00:00Z"));
    }

    #[test]
    fn scope_defaults_to_local() {
        assert_eq!(scope(&json!({"Capabilities": {"Scope": "GLOBAL"}})), Scope::Global);
        assert_eq!(scope(&json!({"Capabilities": {}})), Scope::Local);
        assert_eq!(scope(&json!({})), Scope::Local);
    }

    #[test]
    fn options_tolerate_null_and_non_strings() {
        assert!(options(&json!({"Name": "v", "Opts": null})).unwrap().is_empty());
        let opts = options(&json!({"Opts": {"size": 10, "ro": true, "s": "x"}})).unwrap();
        assert_eq!(opts["size"], "10");
        assert_eq!(opts["ro"], "true");
        assert_eq!(opts["s"], "x");
        assert!(options(&json!({"Opts": [1]})).is_err());
    }

    #[test]
    fn method_paths_round_trip() {
        for op in Operation::ALL {
            let m = Method::Volume(op);
            assert_eq!(Method::from_path(&m.path()), Some(m));
        }
        assert_eq!(Method::from_path("/Plugin.Activate"), Some(Method::Activate));
        assert_eq!(Method::from_path("/VolumeDriver.Nope"), None);
    }
}
