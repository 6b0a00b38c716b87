//! `LinuxMounter` doing real bind mounts (needs root; CI runs as root).

use std::path::Path;

use dory_core::Mounter;
use dory_mount::LinuxMounter;
use dory_mount::mounter::selinux_label;

use crate::support::require_root;

/// A temp dir whose mounts are undone even when the test fails.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::create_dir(dir.path().join("dst")).unwrap();
        Self { dir }
    }
    fn src(&self) -> std::path::PathBuf {
        self.dir.path().join("src")
    }
    fn dst(&self) -> std::path::PathBuf {
        self.dir.path().join("dst")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mounter = LinuxMounter::default();
        for _ in 0..4 {
            if mounter.unmount(&self.dst()).is_err() {
                break;
            }
        }
    }
}

#[test]
fn bind_mount_is_visible_writable_and_undone() {
    require_root("bind mounts");
    let scratch = Scratch::new();
    let mounter = LinuxMounter::default();
    std::fs::write(scratch.src().join("data"), "hello").unwrap();
    assert!(mounter.mounted_at(&scratch.dst()).unwrap().is_none());

    mounter.bind(&scratch.src(), &scratch.dst(), false).unwrap();
    let entry = mounter.mounted_at(&scratch.dst()).unwrap().expect("mounted");
    assert!(!entry.is_read_only());
    assert!(entry.root.ends_with("src"), "mountinfo root names the bound directory: {entry:?}");
    assert_eq!(std::fs::read_to_string(scratch.dst().join("data")).unwrap(), "hello");
    std::fs::write(scratch.dst().join("written"), "through the bind").unwrap();
    assert_eq!(std::fs::read_to_string(scratch.src().join("written")).unwrap(), "through the bind");

    mounter.unmount(&scratch.dst()).unwrap();
    assert!(mounter.mounted_at(&scratch.dst()).unwrap().is_none());
    assert!(std::fs::read_dir(scratch.dst()).unwrap().next().is_none(), "target is empty again");
}

#[test]
fn read_only_bind_refuses_writes() {
    require_root("bind mounts");
    let scratch = Scratch::new();
    let mounter = LinuxMounter::default();
    mounter.bind(&scratch.src(), &scratch.dst(), true).unwrap();
    let entry = mounter.mounted_at(&scratch.dst()).unwrap().expect("mounted");
    assert!(entry.is_read_only(), "{entry:?}");
    let err = std::fs::write(scratch.dst().join("nope"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
    // The source stays writable.
    std::fs::write(scratch.src().join("ok"), "x").unwrap();
    mounter.unmount(&scratch.dst()).unwrap();
}

#[test]
fn errors_name_paths_and_causes() {
    require_root("mount syscalls");
    let scratch = Scratch::new();
    let mounter = LinuxMounter::default();
    let missing = scratch.dir.path().join("missing");
    let err = mounter.bind(&missing, &scratch.dst(), false).unwrap_err();
    let text = dory_core::error_chain(&err);
    assert!(text.starts_with(&format!("cannot bind-mount {missing:?} onto {:?}", scratch.dst())), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");

    let err = mounter.unmount(&scratch.dst()).unwrap_err();
    assert!(dory_core::error_chain(&err).contains("Invalid argument"), "not mounted: {err}");
}

#[test]
fn mounted_at_resolves_symlinked_paths() {
    require_root("bind mounts");
    let scratch = Scratch::new();
    let mounter = LinuxMounter::default();
    let link = scratch.dir.path().join("link");
    std::os::unix::fs::symlink(scratch.dst(), &link).unwrap();
    mounter.bind(&scratch.src(), &scratch.dst(), false).unwrap();
    assert!(mounter.mounted_at(&link).unwrap().is_some());
    mounter.unmount(&scratch.dst()).unwrap();
}

#[test]
fn is_mount_point_asks_the_kernel_and_agrees_with_the_mount_table() {
    require_root("bind mounts");
    let scratch = Scratch::new();
    let mounter = LinuxMounter::default();
    let link = scratch.dir.path().join("link");
    std::os::unix::fs::symlink(scratch.dst(), &link).unwrap();
    let missing = scratch.dir.path().join("missing");
    let agree = |path: &Path| {
        let fast = mounter.is_mount_point(path).unwrap();
        assert_eq!(fast, mounter.mounted_at(path).unwrap().is_some(), "{path:?}");
        fast
    };
    assert!(!agree(&scratch.dst()), "a plain directory");
    assert!(!agree(&link));
    assert!(!mounter.is_mount_point(&missing).unwrap(), "a missing path is not mounted");

    // A bind from the same filesystem: the case st_dev comparisons miss.
    mounter.bind(&scratch.src(), &scratch.dst(), false).unwrap();
    assert!(agree(&scratch.dst()), "a bind mount");
    assert!(agree(&link), "through a symlink");
    assert!(!agree(&scratch.src()), "the bind's source is not a mount point");
    mounter.bind(&scratch.src(), &scratch.dst(), true).unwrap();
    assert!(agree(&scratch.dst()), "stacked read-only bind");

    mounter.unmount(&scratch.dst()).unwrap();
    assert!(agree(&scratch.dst()), "one mount is still stacked there");
    mounter.unmount(&scratch.dst()).unwrap();
    assert!(!agree(&scratch.dst()), "unmounted");
}

#[test]
fn relabel_sets_the_selinux_attribute_on_the_whole_tree() {
    require_root("a tmpfs to hold security.* attributes");
    let scratch = Scratch::new();
    let target = scratch.dst();
    nix::mount::mount(Some("tmpfs"), &target, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m")).unwrap();
    std::fs::create_dir(target.join("sub")).unwrap();
    std::fs::write(target.join("sub/file"), "x").unwrap();
    let label = "system_u:object_r:container_file_t:s0";
    LinuxMounter::default().relabel(&target, label).unwrap();
    for path in [Path::new(""), Path::new("sub"), Path::new("sub/file")] {
        assert_eq!(selinux_label(&target.join(path)).unwrap().as_deref(), Some(label), "{path:?}");
    }
}

/// One mount point whose name is not UTF-8, anywhere on the host, must not
/// break reading the mount table.
#[test]
fn a_non_utf8_mount_point_does_not_break_the_mount_table() {
    use std::os::unix::ffi::OsStrExt as _;
    require_root("mounts");
    let scratch = Scratch::new();
    let odd = scratch.dir.path().join(std::ffi::OsStr::from_bytes(b"odd-\xff-name"));
    std::fs::create_dir(&odd).unwrap();
    nix::mount::mount(Some("tmpfs"), &odd, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=64k")).unwrap();
    let mounter = LinuxMounter::default();
    let table = mounter.mount_table();
    let _ = nix::mount::umount2(&odd, nix::mount::MntFlags::MNT_DETACH);
    let table = table.expect("the table reads despite a non-UTF-8 mount point");
    assert!(table.iter().any(|e| e.mount_point == Path::new("/")), "the other entries are there");
}
