//! Commands for people (not kubelet): `install`, `config`, `doctor`,
//! `backends`, `--help`, `--version`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use dory_core::registry::{build_backend, registered};

use dory_core::DriverConfig;

/// Words that start an administration command rather than a kubelet call.
pub const COMMANDS: [&str; 8] = ["install", "config", "doctor", "backends", "help", "--help", "-h", "--version"];

/// dory: a FlexVolume driver that makes Docker volume plugins usable from Kubernetes.
///
/// kubelet runs dory as <plugin dir>/<vendor>~<driver>/<driver> and reads
/// exactly one JSON object from its output:
///
///   dory init                        -> {"status":"Success","capabilities":{"attach":false}}
///   dory mount <pod dir> <json>      get or create the volume, plugin Mount, bind mount onto <pod dir>
///   dory unmount <pod dir>           unbind, plugin Unmount (works from the path alone)
///   dory <any other verb>            -> {"status":"Not supported"}
///
/// The configuration is the executable's path plus ".json" (see `dory config`).
/// Logs go to logFilePath (default /var/log/dory.log), never to stdout or stderr.
#[derive(Debug, Parser)]
#[command(name = "dory", version = crate::VERSION, verbatim_doc_comment)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install this binary and a configuration into kubelet's plugin directory.
    ///
    /// The driver lands in <plugin-dir>/<vendor~driver>/<driver>, with
    /// <driver>.json beside it. Files are staged as dot-files and renamed
    /// into place, so kubelet sees one change. Without --config an existing
    /// configuration is kept.
    Install {
        /// kubelet's FlexVolume plugin directory.
        #[arg(long, default_value = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec")]
        plugin_dir: PathBuf,
        /// Driver directory name, <vendor>~<driver> (the StorageClass and PVs say <vendor>/<driver>).
        #[arg(long, default_value = "dory~docker")]
        driver: String,
        /// A JSON configuration file to install as <driver>.json.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Keep running after installing, until terminated (the container of a DaemonSet).
        #[arg(long)]
        stay: bool,
    },
    /// Print every problem of the configuration and the effective values.
    Config {
        /// The configuration file [default: this executable's path + .json].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Check the configuration, reach the backend and time its calls.
    Doctor {
        /// The configuration file [default: this executable's path + .json].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// List the backends this binary ships.
    Backends,
}

/// Runs an administration command; `args` is the whole argv.
pub fn run(args: &[String]) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let own_config =
        || DriverConfig::path_for_executable(Path::new(args.first().map(String::as_str).unwrap_or("dory")));
    match cli.command {
        Command::Install { plugin_dir, driver, config, stay } => {
            let code = install(&plugin_dir, &driver, config.as_deref());
            if stay && code == ExitCode::SUCCESS {
                println!("installed; staying up until terminated");
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
            code
        }
        Command::Config { config } => print_config(&config.unwrap_or_else(own_config)),
        Command::Doctor { config } => doctor(&config.unwrap_or_else(own_config)),
        Command::Backends => {
            for registration in registered() {
                println!("{:<10} {}", registration.name, registration.summary);
            }
            ExitCode::SUCCESS
        }
    }
}

fn install(plugin_dir: &Path, driver: &str, config: Option<&Path>) -> ExitCode {
    let config_text = match config.map(std::fs::read_to_string).transpose() {
        Ok(text) => text,
        Err(err) => {
            eprintln!("dory install: cannot read {}: {err}", config.unwrap_or(Path::new("")).display());
            return ExitCode::FAILURE;
        }
    };
    let binary = match std::env::current_exe() {
        Ok(path) => path,
        Err(err) => {
            eprintln!("dory install: cannot find this executable: {err}");
            return ExitCode::FAILURE;
        }
    };
    match crate::install::install(plugin_dir, driver, &binary, config_text.as_deref()) {
        Ok(installed) => {
            println!("installed {}", installed.executable.display());
            let note = if installed.config_written { "written" } else { "kept" };
            println!("config    {} ({note})", installed.config.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("dory install: {err}");
            ExitCode::FAILURE
        }
    }
}

fn print_config(path: &Path) -> ExitCode {
    let (config, mut problems) = DriverConfig::parse(path, std::fs::read_to_string(path), None);
    if problems.is_empty()
        && let Err(err) = build_backend(&config.backend)
    {
        problems.push(dory_core::error_chain(&err));
    }
    for problem in &problems {
        println!("problem: {problem}");
    }
    if !problems.is_empty() {
        println!();
    }
    println!("dory {}", crate::VERSION);
    println!("Current configuration:");
    print!("{}", config.describe());
    if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn doctor(path: &Path) -> ExitCode {
    let mut healthy = true;
    let mut check = |what: &str, result: Result<String, String>| {
        match &result {
            Ok(detail) => println!("ok    {what:<14} {detail}"),
            Err(problem) => {
                healthy = false;
                println!("FAIL  {what:<14} {problem}");
            }
        }
        result.ok()
    };
    let config = check(
        "config",
        DriverConfig::checked(path, std::fs::read_to_string(path), None)
            .map(|_| path.display().to_string())
            .map_err(|e| e.to_string()),
    );
    let config =
        config.map(|_| DriverConfig::checked(path, std::fs::read_to_string(path), None).expect("loaded above"));
    let Some(config) = config else {
        return ExitCode::FAILURE;
    };
    check(
        "log file",
        crate::log::RotatingFile::open(&config.log_file, config.log_max_bytes)
            .map(|_| config.log_file.display().to_string())
            .map_err(|e| format!("{}: {e}", config.log_file.display())),
    );
    check(
        "state dir",
        std::fs::create_dir_all(&config.state_dir)
            .map(|()| config.state_dir.display().to_string())
            .map_err(|e| format!("{}: {e}", config.state_dir.display())),
    );
    let backend = check(
        "backend",
        build_backend(&config.backend)
            .map(|_| config.backend.backend().to_owned())
            .map_err(|e| dory_core::error_chain(&e)),
    );
    let Some(_) = backend else { return ExitCode::FAILURE };
    let backend = build_backend(&config.backend).expect("built above");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            println!("FAIL  runtime        {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let started = Instant::now();
        let capabilities = backend.capabilities().await;
        let scope = capabilities.as_ref().ok().map(|c| c.scope);
        check(
            "capabilities",
            capabilities
                .map(|c| format!("scope {} ({:.1} ms)", c.scope, started.elapsed().as_secs_f64() * 1000.0))
                .map_err(|e| dory_core::error_chain(&e)),
        );
        if scope == Some(dory_core::Scope::Local) {
            println!(
                "note  scope local: each volume lives on the node that made it; provision with doryd per node \
                 (deploy/doryd-per-node.yaml) and WaitForFirstConsumer StorageClasses"
            );
        }
        let started = Instant::now();
        let list = backend.list().await;
        check(
            "list",
            list.map(|v| format!("{} volume(s) ({:.1} ms)", v.len(), started.elapsed().as_secs_f64() * 1000.0))
                .map_err(|e| dory_core::error_chain(&e)),
        );
    });
    if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
