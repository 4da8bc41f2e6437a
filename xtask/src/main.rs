//! Project tasks: `cargo xtask setup | build | run | test`.
//!
//! Every command first runs the idempotent set-up (see `setup.rs`), so the README's
//! commands work on a fresh machine.

mod bench;
mod setup;

use std::{ffi::OsString, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building portx needs (rust-src, bpf-linker); safe to rerun.
    Setup,
    /// Build portx (its BPF programs included).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run portx with the given arguments, e.g. `cargo xtask run -- trace`.
    Run {
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Benchmarks, each against a baseline measured in the same run (root for all figures).
    Bench {
        /// A smaller run (under 2 minutes).
        #[arg(long)]
        quick: bool,
        /// Append the table to BENCHMARKS.md.
        #[arg(long)]
        record: bool,
    },
    /// Everything CI checks: formatting, clippy, unit tests and, as root, the
    /// privileged tests that load the BPF programs into this kernel.
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn cargo(tools: &setup::Tools, args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(args).env("PATH", tools.path()?);
    Ok(cmd)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    eprintln!("xtask: {what}");
    let st = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Setup => {
            let tools = setup::run(false)?;
            println!("{}", setup::describe(&tools));
        }
        Task::Build { release } => {
            let tools = setup::run(false)?;
            let mut args = vec!["build", "--package", "portx"];
            if release {
                args.push("--release");
            }
            run(&mut cargo(&tools, &args)?, "cargo build")?;
        }
        Task::Run { release, args } => {
            let tools = setup::run(false)?;
            let mut cargo_args = vec!["run", "--quiet", "--package", "portx", "--bin", "portx"];
            if release {
                cargo_args.push("--release");
            }
            cargo_args.push("--");
            let mut cmd = cargo(&tools, &cargo_args)?;
            cmd.args(args);
            let st = cmd.status().context("starting cargo run")?;
            std::process::exit(st.code().unwrap_or(1));
        }
        Task::Bench { quick, record } => {
            let tools = setup::run(false)?;
            bench::run(&mut cargo(&tools, &[])?, quick, record)?;
        }
        Task::Test { args } => {
            let tools = setup::run(true)?;
            run(
                &mut cargo(&tools, &["fmt", "--all", "--", "--check"])?,
                "cargo fmt --check",
            )?;
            run(
                &mut cargo(&tools, &["clippy", "--all-targets", "--", "-D", "warnings"])?,
                "cargo clippy",
            )?;
            let mut unit = cargo(&tools, &["test", "--lib", "--bins", "--"])?;
            unit.args(&args);
            run(&mut unit, "unit tests")?;
            // Last, so its result is the run's closing line. One test at a time: each
            // loads the BPF programs and times its own namespaces' events.
            let mut privileged = cargo(
                &tools,
                &[
                    "test",
                    "--package",
                    "portx",
                    "--test",
                    "privileged",
                    "--",
                    "--test-threads=1",
                ],
            )?;
            privileged.args(&args);
            run(
                &mut privileged,
                "privileged tests (root: real BPF programs, real sockets)",
            )?;
        }
    }
    Ok(())
}
