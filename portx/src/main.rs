use std::process::ExitCode;

use clap::Parser as _;
use portx::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            Command::Trace(args) => portx::trace::run(args, cli.verbose).await,
            Command::Top(args) => portx::top::run(args, cli.verbose).await,
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
