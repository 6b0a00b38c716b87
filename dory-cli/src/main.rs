//! `dory`, the FlexVolume driver. kubelet calls get exactly one JSON reply
//! on stdout, whatever happens (panics included); administration commands
//! behave like any command-line tool.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Mutex;

use dory_cli::error::DriverError;
use dory_cli::reply::FlexReply;

/// The last panic's message, kept by the silent panic hook.
static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    if args.get(1).is_some_and(|verb| dory_cli::admin::COMMANDS.contains(&verb.as_str()) || verb == "-V") {
        return dory_cli::admin::run(&args);
    }
    // kubelet parses stdout and stderr as one JSON document: a panic must
    // not print, it becomes a Failure reply.
    std::panic::set_hook(Box::new(|info| {
        let message = match info.payload().downcast_ref::<&str>() {
            Some(text) => (*text).to_owned(),
            None => info.payload().downcast_ref::<String>().cloned().unwrap_or_else(|| "panic".into()),
        };
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(panic = %message, "driver panicked{location}");
        if let Ok(mut slot) = PANIC_MESSAGE.lock() {
            *slot = Some(format!("{message}{location}"));
        }
    }));
    let reply = std::panic::catch_unwind(|| dory_cli::flex::run(&args)).unwrap_or_else(|_| {
        let message = PANIC_MESSAGE.lock().ok().and_then(|mut m| m.take()).unwrap_or_else(|| "panic".into());
        FlexReply::from(&DriverError::Panic { message })
    });
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", reply.to_json());
    let _ = stdout.flush();
    ExitCode::from(reply.exit_code())
}
