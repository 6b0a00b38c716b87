//! Plugin names resolved like dockerd: sockets, spec files, managed plugins.

use std::path::{Path, PathBuf};

use dory_backend_docker::{DockerBackend, DockerBackendSettings, PluginAddress, PluginError, PluginLocator};
use dory_core::{CreateOptions, VolumeBackend};
use tempfile::TempDir;

use crate::support::{MockPlugin, RawServer, fast_policy, http, id, vol};

struct Dirs {
    root: TempDir,
}

impl Dirs {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        for dir in ["run", "etc", "lib"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        Self { root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn locator(&self) -> PluginLocator {
        PluginLocator {
            socket_dir: self.path("run"),
            spec_dirs: vec![self.path("etc"), self.path("lib")],
            docker_socket: self.path("docker.sock"),
        }
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

fn symlink(target: &Path, link: PathBuf) {
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[tokio::test]
async fn names_resolve_to_sockets_then_spec_files() {
    let dirs = Dirs::new();
    let locator = dirs.locator();
    let plugin = MockPlugin::start().await;

    // A symlink in the socket directory works, as with dockerd.
    symlink(&plugin.socket, dirs.path("run/flat.sock"));
    symlink(&plugin.socket, dirs.path("run/nested/nested.sock"));
    dirs.write("etc/unixspec.spec", &format!("unix://{}\n", plugin.socket.display()));
    dirs.write("lib/tcpspec/tcpspec.spec", "tcp://127.0.0.1:9099");
    dirs.write("etc/jsonspec.json", r#"{"Name":"jsonspec","Addr":"tcp://localhost:7000"}"#);
    // Sockets win over spec files of the same name.
    dirs.write("etc/flat.spec", "tcp://127.0.0.1:1");

    let resolve = |name: &'static str| {
        let locator = locator.clone();
        async move { locator.resolve(name).await.map(|r| r.address) }
    };
    assert_eq!(resolve("flat").await.unwrap(), PluginAddress::Unix(dirs.path("run/flat.sock")));
    assert_eq!(resolve("nested").await.unwrap(), PluginAddress::Unix(dirs.path("run/nested/nested.sock")));
    assert_eq!(resolve("unixspec").await.unwrap(), PluginAddress::Unix(plugin.socket.clone()));
    assert_eq!(resolve("tcpspec").await.unwrap(), PluginAddress::Tcp("127.0.0.1:9099".into()));
    assert_eq!(resolve("jsonspec").await.unwrap(), PluginAddress::Tcp("localhost:7000".into()));
    assert_eq!(resolve("/abs/p.sock").await.unwrap(), PluginAddress::Unix("/abs/p.sock".into()));
}

#[tokio::test]
async fn bad_spec_files_are_clear_errors() {
    let dirs = Dirs::new();
    dirs.write("etc/noscheme.spec", "/run/x.sock");
    dirs.write("etc/tls.json", r#"{"Addr":"https://10.0.0.1:443"}"#);
    dirs.write("etc/broken.json", "{");
    let locator = dirs.locator();
    let err = locator.resolve("noscheme").await.unwrap_err();
    assert!(err.to_string().contains("unknown protocol"), "{err}");
    let err = locator.resolve("tls").await.unwrap_err();
    assert!(err.to_string().contains("HTTP(S) plugin addresses are not supported"), "{err}");
    let err = locator.resolve("broken").await.unwrap_err();
    assert!(err.to_string().contains("not JSON"), "{err}");
}

#[tokio::test]
async fn a_missing_plugin_lists_every_place_searched() {
    let dirs = Dirs::new();
    let err = dirs.locator().resolve("ghost").await.unwrap_err();
    assert!(matches!(err, PluginError::NotFound { .. }), "{err}");
    let text = err.to_string();
    for place in [
        "run/ghost.sock",
        "run/ghost/ghost.sock",
        "etc/ghost.spec",
        "lib/ghost/ghost.json",
        "docker.sock (no such socket)",
    ] {
        assert!(text.contains(place), "mentions {place}: {text}");
    }
}

/// The Docker daemon's API, as far as plugin lookup uses it.
async fn fake_daemon(dirs: &Dirs, plugins_json: &'static str) -> RawServer {
    let listener = tokio::net::UnixListener::bind(dirs.path("docker.sock")).unwrap();
    RawServer::unix_at(listener, PluginAddress::Unix(dirs.path("docker.sock")), None, move |request, _| {
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/plugins") => http("200 OK", "application/json", plugins_json),
            ("GET", "/info") => http("200 OK", "application/json", r#"{"DockerRootDir":"/var/lib/docker"}"#),
            _ => http("404 Not Found", "application/json", r#"{"message":"page not found"}"#),
        }
    })
}

const PLUGINS: &str = r#"[
  {"Id":"0123abcd","Name":"ccomb/buttervolume:latest","Enabled":true,
   "Config":{"Interface":{"Socket":"btrfs.sock","Types":["docker.volumedriver/1.0"]},"PropagatedMount":"/var/lib/buttervolume"}},
  {"Id":"feedbeef","Name":"vendor/off:1.0","Enabled":false,"Config":{"Interface":{"Socket":"off.sock"}}}
]"#;

#[tokio::test]
async fn managed_plugins_resolve_through_the_daemon() {
    let dirs = Dirs::new();
    let daemon = fake_daemon(&dirs, PLUGINS).await;
    let locator = dirs.locator();

    let resolved = locator.resolve("ccomb/buttervolume").await.unwrap();
    assert_eq!(resolved.address, PluginAddress::Unix(dirs.path("run/0123abcd/btrfs.sock")));
    let managed = resolved.managed.unwrap();
    assert_eq!(managed.name, "ccomb/buttervolume:latest");
    assert_eq!(
        managed.host_path(Path::new("/var/lib/buttervolume/volumes/v1")),
        PathBuf::from("/var/lib/docker/plugins/0123abcd/propagated-mount/volumes/v1")
    );
    assert_eq!(
        managed.host_path(Path::new("/mnt/elsewhere/v2")),
        PathBuf::from("/var/lib/docker/plugins/0123abcd/rootfs/mnt/elsewhere/v2"),
        "mountpoints outside the propagated mount are in the plugin's rootfs"
    );
    assert!(locator.resolve("ccomb/buttervolume:latest").await.is_ok());

    let err = locator.resolve("vendor/off:1.0").await.unwrap_err();
    assert!(err.to_string().contains("installed but disabled"), "{err}");
    let err = locator.resolve("vendor/absent").await.unwrap_err();
    assert!(err.to_string().contains("managed plugins of the Docker daemon"), "{err}");
    assert!(daemon.requests().iter().all(|r| r.method == "GET"));
}

#[tokio::test]
async fn a_broken_daemon_is_reported_as_such() {
    let dirs = Dirs::new();
    let _daemon = fake_daemon(&dirs, "not json").await;
    let err = dirs.locator().resolve("vendor/x").await.unwrap_err();
    assert!(matches!(err, PluginError::Daemon { .. }), "{err}");
    assert!(dory_core::error_chain(&err).contains("invalid GET reply"), "{}", dory_core::error_chain(&err));
}

#[tokio::test]
async fn docker_backend_by_plugin_name_drives_the_plugin() {
    let dirs = Dirs::new();
    let plugin = MockPlugin::start().await;
    symlink(&plugin.socket, dirs.path("run/mockp.sock"));
    let settings = DockerBackendSettings { plugin: "mockp".into(), locator: dirs.locator(), policy: fast_policy() };
    let backend = DockerBackend::new(settings);
    backend.create(&vol("byname"), &CreateOptions::new()).await.unwrap();
    let path = backend.mount(&vol("byname"), &id("pod")).await.unwrap();
    assert_eq!(path, plugin.backend.root().join("byname"));
    backend.unmount(&vol("byname"), &id("pod")).await.unwrap();
    backend.remove(&vol("byname")).await.unwrap();
    assert!(backend.get(&vol("byname")).await.unwrap().is_none());
}
