//! `doryd`: the dynamic provisioner. This is the foundation's placeholder:
//! it is composed against the backend registry and lists what it ships; the
//! controller arrives with the provisioner issue.

use std::process::ExitCode;

use dory_backend_docker as _;
use dory_backend_mock as _;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("--version") => println!("doryd {}", env!("CARGO_PKG_VERSION")),
        Some("backends") => {
            for registration in dory_core::registry::registered() {
                println!("{:<10} {}", registration.name, registration.summary);
            }
        }
        _ => {
            eprintln!("doryd: the provisioner is not implemented in this build; try `doryd backends`");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
