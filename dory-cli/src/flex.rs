//! The FlexVolume calls kubelet makes: argv in, one reply out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dory_core::registry::build_backend;

use dory_core::DriverConfig;
use dory_mount::{PublishOutcome, PublishRequest};

use crate::driver::Driver;
use crate::error::DriverError;
use crate::reply::FlexReply;
use crate::request::MountRequest;
use dory_mount::LinuxMounter;

/// Verbs kubelet or the controller manager may call that Dory answers
/// "Not supported" (it declares `attach: false`).
pub const UNSUPPORTED_VERBS: [&str; 9] = [
    "attach",
    "detach",
    "isattached",
    "waitforattach",
    "mountdevice",
    "unmountdevice",
    "getvolumename",
    "expandvolume",
    "expandfs",
];

/// How long cleanup after SIGTERM may take before the driver gives up and
/// leaves it to the next call (the mount record stays until it is done).
const CLEANUP_LIMIT: Duration = Duration::from_secs(1);

/// Runs one kubelet call. `args[0]` is the executable as kubelet ran it
/// (its path plus `.json` is the configuration).
pub fn run(args: &[String]) -> FlexReply {
    let Some(verb) = args.get(1).map(String::as_str) else {
        return FlexReply::failure("no verb given: kubelet runs `dory <verb> [args]`; see `dory --help`");
    };
    let executable = PathBuf::from(args.first().map(String::as_str).unwrap_or("dory"));
    let config_path = DriverConfig::path_for_executable(&executable);
    let config = DriverConfig::checked(&config_path, std::fs::read_to_string(&config_path), None);
    let mount = match (&config, verb) {
        (Ok(config), "mount") => Some(parse_mount(config, &args[2..])),
        _ => None,
    };
    let log_problem = match &config {
        Ok(config) => crate::log::init(&config.log_file, config.log_max_bytes, config.log_debug).err(),
        Err(_) => None,
    };
    let span = tracing::info_span!("dory", pid = std::process::id(), verb);
    let _entered = span.enter();
    // A parsed mount logs one line with all of it ("mount requested").
    if !matches!(mount, Some(Ok(_))) {
        tracing::info!(args = %describe_args(verb, &args[2..]), config = %config_path.display(), "request");
    }
    let reply = match (config, mount) {
        (Err(err), _) if !UNSUPPORTED_VERBS.contains(&verb) && is_known(verb) => {
            FlexReply::from(&DriverError::from(err))
        }
        (Err(_), _) => FlexReply::not_supported(),
        (Ok(config), Some(mount)) => match mount {
            Ok(mount) => mount.run(config, &config_path),
            Err(err) => FlexReply::from(&err),
        },
        (Ok(config), None) => dispatch(verb, &args[2..], config),
    };
    let reply = match (log_problem, reply) {
        (Some(problem), mut reply) if reply.status != crate::reply::Status::Failure => {
            reply.message = Some(format!("warning: {problem}"));
            reply
        }
        (_, reply) => reply,
    };
    tracing::info!(reply = %reply.to_json(), "reply");
    reply
}

fn is_known(verb: &str) -> bool {
    matches!(verb, "init" | "mount" | "unmount")
}

/// A parsed `mount` call.
struct MountCall {
    dir: PathBuf,
    request: MountRequest,
    publish: PublishRequest,
}

/// Parses `mount <dir> <json options>` (once: the log line of the request
/// uses it too).
fn parse_mount(config: &DriverConfig, args: &[String]) -> Result<MountCall, DriverError> {
    let Some(dir) = args.first() else {
        return Err(DriverError::Usage {
            verb: "mount".into(),
            reason: "expected <pod volume dir> <json options>".into(),
        });
    };
    // Kubernetes 1.5 passed a device before the JSON: the first argument
    // that parses wins.
    let mut request = Err(DriverError::Usage { verb: "mount".into(), reason: "missing <json options>".into() });
    for arg in &args[1..] {
        request = MountRequest::parse(arg);
        if request.is_ok() {
            break;
        }
    }
    let request = request?;
    let dir = absolute(Path::new(dir));
    let publish = Driver::publish_request(config, &dir, &request)?;
    Ok(MountCall { dir, request, publish })
}

impl MountCall {
    fn run(self, config: DriverConfig, config_path: &Path) -> FlexReply {
        let MountCall { dir, request, publish } = self;
        tracing::info!(
            dir = %dir.display(), volume = %publish.volume, pod = %publish.id, read_only = publish.read_only,
            fs_group = ?request.fs_group().ok().flatten(), options = %request.redacted(),
            config = %config_path.display(), "mount requested"
        );
        with_driver(config, &dir, |driver, dir| async move {
            driver.mount(&dir, &publish).await.map(|outcome| match outcome {
                PublishOutcome::Mounted { .. } => FlexReply::success(),
                PublishOutcome::AlreadyMounted => FlexReply::success(),
            })
        })
    }
}

fn dispatch(verb: &str, args: &[String], config: DriverConfig) -> FlexReply {
    match verb {
        "init" => match build_backend(&config.backend) {
            // Building checks the backend's settings; it never contacts it.
            Ok(_) => FlexReply::init(config.enable_1_6),
            Err(err) => FlexReply::failure(format!("{}: {}", config.path.display(), dory_core::error_chain(&err))),
        },
        "unmount" => {
            let Some(dir) = args.first() else {
                return usage(verb, "expected <pod volume dir>");
            };
            with_driver(config, Path::new(dir), |driver, dir| async move {
                driver.unmount(&dir).await.map(|()| FlexReply::success())
            })
        }
        _ => {
            tracing::info!(verb, "not supported");
            FlexReply::not_supported()
        }
    }
}

fn usage(verb: &str, reason: &str) -> FlexReply {
    FlexReply::from(&DriverError::Usage { verb: verb.into(), reason: reason.into() })
}

/// Builds the driver and runs `call` on a single-threaded runtime, ending
/// promptly on SIGTERM or SIGINT (undoing a half-done mount first).
fn with_driver<F, Fut>(config: DriverConfig, dir: &Path, call: F) -> FlexReply
where
    F: FnOnce(Arc<Driver>, PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<FlexReply, DriverError>>,
{
    let backend = match build_backend(&config.backend) {
        Ok(backend) => backend,
        Err(err) => return FlexReply::failure(format!("{}: {}", config.path.display(), dory_core::error_chain(&err))),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return FlexReply::failure(format!("cannot start the async runtime: {err}")),
    };
    // Only an opted-in driver relabels, so only it needs to ask the kernel.
    let selinux = config.selinux_relabel && LinuxMounter::selinux_enabled();
    let driver = Arc::new(Driver::new(config, backend, Arc::new(LinuxMounter::default()), selinux));
    let dir = absolute(dir);
    let reply = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return FlexReply::failure("cannot install signal handlers");
        };
        let signal_name = tokio::select! {
            result = call(driver.clone(), dir.clone()) => {
                return match result {
                    Ok(reply) => reply,
                    Err(err) => {
                        tracing::error!(error = %dory_core::error_chain(&err), "failed");
                        FlexReply::from(&err)
                    }
                };
            }
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(signal = signal_name, "interrupted; cleaning up");
        let rolled_back = match tokio::time::timeout(CLEANUP_LIMIT, driver.recover_interrupted(&dir)).await {
            Ok(Ok(undone)) => undone,
            Ok(Err(err)) => {
                tracing::warn!(error = %dory_core::error_chain(&err), "cleanup failed; the next call will retry it");
                false
            }
            Err(_) => {
                tracing::warn!("cleanup timed out; the next call will retry it");
                false
            }
        };
        FlexReply::from(&DriverError::Interrupted { signal: signal_name, rolled_back })
    });
    // Every task the reply depends on has finished and the process is
    // about to exit: the kernel reclaims the runtime's descriptors and
    // memory faster than its destructors would.
    std::mem::forget(runtime);
    reply
}

/// kubelet passes absolute paths; a relative one is made absolute so the
/// mount table comparison works.
fn absolute(dir: &Path) -> PathBuf {
    if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().map(|cwd| cwd.join(dir)).unwrap_or_else(|_| dir.to_path_buf())
    }
}

/// The arguments for the log, with secrets redacted.
fn describe_args(verb: &str, args: &[String]) -> String {
    args.iter()
        .map(|arg| match (verb, MountRequest::parse(arg)) {
            ("mount", Ok(request)) => request.redacted(),
            _ if arg.contains("kubernetes.io/secret/") => "<unparsable options with secrets>".to_owned(),
            _ => arg.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
