use std::process::ExitCode;

use clap::Parser as _;
use portx::cli::{Cli, Command};

fn main() -> ExitCode {
    // Usage errors exit 64 (EX_USAGE): `portx check` gives 1 and 2 their own meaning.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Command::Check(args) = &cli.command {
        let args = portx::cli::CheckArgs {
            verbose: cli.verbose,
            ..args.clone()
        };
        // Errors (unreadable settings, unknown namespace) exit 3 and above.
        return match portx::commands::check::run(&args) {
            Ok(status) => ExitCode::from(status),
            Err(e) => {
                eprintln!("portx: error: {e:#}");
                ExitCode::from(3)
            }
        };
    }
    if let Command::Report(args) = &cli.command {
        // Reads files only: no root, BPF or runtime.
        return match portx::commands::report::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portx: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portx: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trace(args) => portx::commands::trace::run(args, cli.verbose).await,
            Command::Top(args) => portx::commands::top::run(args, cli.verbose).await,
            Command::Record(args) => portx::commands::record::run(args, cli.verbose).await,
            Command::Serve(args) => portx::commands::serve::run(args, cli.verbose).await,
            Command::Check(_) | Command::Report(_) => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portx: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
