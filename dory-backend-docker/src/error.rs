//! Errors of the plugin client and of plugin address resolution.

use std::path::PathBuf;
use std::time::Duration;

/// A boxed transport cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong talking to a Docker volume plugin. Each
/// message names the plugin, and the method when there was a call.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin could not be reached (connect refused, socket missing),
    /// after the retries allowed: the request was never delivered.
    #[error("cannot reach plugin {plugin} for {method} (after {attempts} attempt(s))")]
    Transport {
        /// The plugin's address.
        plugin: String,
        /// The endpoint called.
        method: &'static str,
        /// How many attempts were made.
        attempts: u32,
        /// The last transport error.
        #[source]
        source: BoxError,
    },

    /// The connection broke after the request was sent (reset, closed, a
    /// reply cut short): the plugin may or may not have carried it out.
    #[error("the connection to plugin {plugin} broke during {method}; the plugin may or may not have carried it out")]
    Broken {
        /// The plugin's address.
        plugin: String,
        /// The endpoint called.
        method: &'static str,
        /// The transport error.
        #[source]
        source: BoxError,
    },

    /// A Mount whose outcome was unknown (no usable reply) was undone with
    /// an Unmount of the same ID, so the plugin's count stays balanced.
    #[error("{error}; {}", match undo { None => "Dory sent Unmount to undo a mount the plugin may have made".to_owned(), Some(undo) => format!("undoing it with Unmount failed too ({undo}): the plugin may still hold a mount for this ID") })]
    MountUndone {
        /// The Mount's failure, as text.
        error: String,
        /// Why the Unmount failed, if it did.
        undo: Option<String>,
        /// What the Mount's failure means.
        kind: dory_core::ErrorKind,
    },

    /// The plugin did not answer within the call's time limit.
    #[error("plugin {plugin} did not answer {method} within {}", humantime::format_duration(*after))]
    Timeout {
        /// The plugin's address.
        plugin: String,
        /// The endpoint called.
        method: &'static str,
        /// The limit that ran out.
        after: Duration,
    },

    /// The plugin answered with a non-2xx status; `text` is its `Err` or,
    /// without one, its raw body (as dockerd reports it).
    #[error("plugin {plugin}: {method}: {text} (HTTP {status})")]
    Status {
        /// The plugin's address.
        plugin: String,
        /// The endpoint called.
        method: &'static str,
        /// The HTTP status.
        status: u16,
        /// The plugin's own words.
        text: String,
    },

    /// The plugin answered 2xx with a non-empty `Err`.
    #[error("plugin {plugin}: {method}: {message}")]
    Refused {
        /// The plugin's address.
        plugin: String,
        /// The endpoint called.
        method: &'static str,
        /// The plugin's `Err`, as it wrote it.
        message: String,
    },

    /// The reply could not be understood.
    #[error("plugin {plugin} sent an invalid {method} reply: {reason}")]
    Malformed {
        /// The plugin's address.
        plugin: String,
        /// The endpoint called.
        method: &'static str,
        /// What was wrong with it.
        reason: String,
    },

    /// The reply was larger than the client accepts.
    #[error("plugin {plugin} sent a {method} reply larger than {limit} bytes")]
    TooLarge {
        /// The plugin's address.
        plugin: String,
        /// The endpoint called.
        method: &'static str,
        /// The configured cap.
        limit: usize,
    },

    /// No plugin of that name was found anywhere dockerd would look.
    #[error("plugin {name:?} not found; looked in: {searched}")]
    NotFound {
        /// The plugin name asked for.
        name: String,
        /// Every place searched, comma-separated.
        searched: String,
    },

    /// The address or a spec file is not usable.
    #[error("invalid plugin address {address:?}: {reason}")]
    BadAddress {
        /// The address or spec file content.
        address: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A spec file could not be read.
    #[error("cannot read plugin spec file {path:?}")]
    SpecFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The Docker daemon, asked about a managed plugin, failed.
    #[error("cannot list managed plugins from the Docker daemon at {socket:?}")]
    Daemon {
        /// The daemon's socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: Box<PluginError>,
    },

    /// The managed plugin exists but is disabled.
    #[error("managed plugin {name:?} is installed but disabled (docker plugin enable {name})")]
    Disabled {
        /// The plugin name.
        name: String,
    },
}

/// How Dory reads "this volume does not exist" in a plugin's `Err`. The
/// Docker protocol has no error codes, only free text, so this is the whole
/// of what counts as absence:
/// - `no such volume` anywhere: dockerd's own `ErrNoSuchVolume` text, which
///   plugins built on it and buttervolume (`nope: no such volume`) answer;
/// - one of [`ABSENCE_PHRASES`] in a message that names the volume itself
///   (`volume "v" does not exist` from Dory's own server, Go's `volume v
///   not found`): a bare `pool "tank" does not exist` or `file does not
///   exist` is about something else and stays an error.
///
/// Everything else a plugin answers is an error with an unknown outcome,
/// never absence: a storage error must not make a caller skip a Remove or
/// create an empty volume.
const NO_SUCH_VOLUME: &str = "no such volume";

/// Phrases that mean absence when the message names the volume.
const ABSENCE_PHRASES: [&str; 4] = ["does not exist", "doesn't exist", "not found", "no such"];

/// Phrases in a plugin's `Err` that mean the volume is held by a mount.
const IN_USE_PHRASES: [&str; 4] = ["in use", "is busy", "device or resource busy", "still mounted"];

impl PluginError {
    /// What a caller may conclude from this error, about no volume in
    /// particular (only `no such volume` is absence then).
    pub fn kind(&self) -> dory_core::ErrorKind {
        self.kind_for(None)
    }

    /// What a caller may conclude from this error about `volume`: see
    /// [`NO_SUCH_VOLUME`] for the only answers read as "it does not exist".
    pub fn kind_for(&self, volume: Option<&str>) -> dory_core::ErrorKind {
        use dory_core::ErrorKind;
        match self {
            Self::Refused { message: text, .. } | Self::Status { text, .. } => {
                let lower = text.to_ascii_lowercase();
                let names_volume = volume.is_some_and(|v| mentions(&lower, &v.to_ascii_lowercase()));
                if lower.contains(NO_SUCH_VOLUME) || (names_volume && ABSENCE_PHRASES.iter().any(|p| lower.contains(p)))
                {
                    ErrorKind::NotFound
                } else if IN_USE_PHRASES.iter().any(|p| lower.contains(p)) {
                    ErrorKind::InUse
                } else {
                    ErrorKind::Refused
                }
            }
            Self::Malformed { .. } => ErrorKind::Refused,
            Self::MountUndone { kind, .. } => *kind,
            Self::Transport { .. }
            | Self::Broken { .. }
            | Self::Timeout { .. }
            | Self::TooLarge { .. }
            | Self::Daemon { .. } => ErrorKind::Unavailable,
            // The plugin is not (yet) where dockerd would look: it may start.
            Self::NotFound { .. } | Self::Disabled { .. } | Self::SpecFile { .. } => ErrorKind::Unavailable,
            Self::BadAddress { .. } => ErrorKind::Invalid,
        }
    }

    /// True when the plugin itself answered with an error (`Err` or a
    /// non-2xx status), as opposed to not answering usefully at all.
    pub fn is_plugin_answer(&self) -> bool {
        matches!(self, Self::Refused { .. } | Self::Status { .. })
    }

    /// True when the request may have been carried out although no usable
    /// reply came back: a timeout, a broken connection, an oversized or
    /// malformed reply. (An unreachable plugin never got it; a plugin that
    /// answered with an error said it did not do it.)
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Broken { .. } | Self::Timeout { .. } | Self::TooLarge { .. } | Self::Malformed { .. })
    }

    /// The HTTP status, when the plugin answered with a non-2xx one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Whether `text` names `word` as a whole token (not inside a longer name).
fn mentions(text: &str, word: &str) -> bool {
    let is_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    !word.is_empty()
        && text.match_indices(word).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + word.len()..].chars().next();
            !before.is_some_and(is_name) && !after.is_some_and(|c| is_name(c) && c != '.')
        })
}

#[cfg(test)]
mod tests {
    use dory_core::ErrorKind;

    use super::*;

    fn refused(message: &str) -> PluginError {
        PluginError::Refused { plugin: "p".into(), method: "VolumeDriver.Get", message: message.into() }
    }

    #[test]
    fn only_a_definite_answer_is_absence() {
        assert_eq!(refused("nope: no such volume").kind(), ErrorKind::NotFound, "buttervolume, dockerd");
        let v = Some("pvc-1");
        assert_eq!(refused("volume \"pvc-1\" does not exist").kind_for(v), ErrorKind::NotFound, "our own server");
        assert_eq!(refused("volume pvc-1 not found").kind_for(v), ErrorKind::NotFound, "the usual Go wording");
        assert_eq!(refused("Volume PVC-1 Not Found.").kind_for(v), ErrorKind::NotFound);
        assert_eq!(refused("volume \"pvc-1\" does not exist").kind(), ErrorKind::Refused, "no volume to check");
        assert_eq!(refused("pool \"tank\" does not exist").kind_for(v), ErrorKind::Refused, "about something else");
        assert_eq!(refused("open /vols/x: file does not exist").kind_for(v), ErrorKind::Refused);
        assert_eq!(refused("volume pvc-10 not found").kind_for(v), ErrorKind::Refused, "another volume");
        assert_eq!(refused("backend storage not reachable").kind(), ErrorKind::Refused);
        assert_eq!(refused("volume v is in use by 2 containers").kind(), ErrorKind::InUse);
        let status = PluginError::Status { plugin: "p".into(), method: "m", status: 500, text: "disk on fire".into() };
        assert_eq!(status.kind(), ErrorKind::Refused, "a 500 is an error, not absence");
        let timeout =
            PluginError::Timeout { plugin: "p".into(), method: "m", after: std::time::Duration::from_secs(1) };
        assert_eq!(timeout.kind(), ErrorKind::Unavailable);
    }
}
