//! `dory`: the FlexVolume driver. This is the foundation's placeholder: it
//! answers `init` and lists the backends it ships; the mount verbs arrive
//! with the driver issue and answer a clear failure until then.

use std::process::ExitCode;

use dory_cli as _;
use serde_json::json;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reply = match args.first().map(String::as_str) {
        Some("init") => json!({"status": "Success", "capabilities": {"attach": false}}),
        Some("--version" | "version") => {
            println!("dory {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("backends") => {
            for registration in dory_core::registry::registered() {
                println!("{:<10} {}", registration.name, registration.summary);
            }
            return ExitCode::SUCCESS;
        }
        Some(verb @ ("mount" | "unmount")) => {
            json!({"status": "Failure", "message": format!("dory {verb}: not implemented in this build")})
        }
        _ => json!({"status": "Not supported"}),
    };
    println!("{reply}");
    ExitCode::SUCCESS
}
