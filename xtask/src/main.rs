//! Project tasks: `cargo xtask setup | build | run | test | vm-test | deploy-check | dist`.
//!
//! Every command first runs the idempotent set-up (see `setup.rs`), so the README's
//! commands work on a fresh machine.

mod bench;
mod deploy;
mod setup;
mod vm;

use std::{ffi::OsString, process::Command, time::Duration};

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
        /// Run only these parts: ingest, memory, baseline, storm, latency, capture, serve
        /// (comma-separated).
        #[arg(long, value_delimiter = ',', conflicts_with = "record")]
        only: Vec<String>,
    },
    /// Everything CI checks: formatting, clippy, unit tests and, as root, the
    /// privileged tests that load the BPF programs into this kernel, then the same
    /// tests in QEMU on Debian's 6.1 and 6.12 kernels (skip those: PORTX_SKIP_VM=1).
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Check the files under deploy/ with the tools that read them (systemd-analyze,
    /// kubernetes-validate, promtool, man) and against each other; one line per check.
    DeployCheck {
        /// Also build and check the package (`cargo xtask dist`; a release musl build).
        #[arg(long)]
        dist: bool,
    },
    /// A static musl release binary and a .deb (binary, systemd unit, man page) in
    /// target/dist/, then their checks.
    Dist,
    /// The privileged tests inside QEMU (TCG) on Debian's 6.1 and 6.12 cloud kernels,
    /// e.g. `cargo xtask vm-test --kernel 6.1 -- top_`.
    VmTest {
        /// Which kernels to boot.
        #[arg(long, value_enum, default_value = "all")]
        kernel: vm::KernelChoice,
        /// Wall-clock limit per kernel, in seconds (TCG is slow).
        #[arg(long, default_value_t = vm::TIMEOUT_SECS)]
        timeout: u64,
        /// Extra arguments for the test binary (e.g. a test name filter).
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
        Task::Bench {
            quick,
            record,
            only,
        } => {
            let tools = setup::run(false)?;
            // The peer the connect storm compares against.
            setup::ensure_commands(&[("bpftrace", "bpftrace"), ("ss", "iproute2")])?;
            bench::run(&mut cargo(&tools, &[])?, quick, record, &only)?;
        }
        Task::DeployCheck { dist } => {
            let tools = setup::run(false)?;
            if !deploy::check(&tools, dist)? {
                std::process::exit(1);
            }
        }
        Task::Dist => {
            let tools = setup::run(false)?;
            if !deploy::dist(&tools)? {
                std::process::exit(1);
            }
        }
        Task::VmTest {
            kernel,
            timeout,
            args,
        } => {
            let tools = setup::run(true)?;
            let series = kernel.series();
            if !vm::run(&tools, &series, &args, Duration::from_secs(timeout))? {
                // The summary's "N passed, M failed" stays the closing line.
                std::process::exit(1);
            }
        }
        Task::Test { args } => {
            let tools = setup::run(true)?;
            let skip_vm = std::env::var_os("PORTX_SKIP_VM").is_some_and(|v| v == "1");
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
            // The deployment files, and the package (a release musl build: about 2.5
            // minutes the first time, seconds when nothing changed; PORTX_SKIP_DIST=1
            // leaves it out).
            let skip_dist = std::env::var_os("PORTX_SKIP_DIST").is_some_and(|v| v == "1");
            eprintln!(
                "xtask: deploy-check{}",
                if skip_dist {
                    " (PORTX_SKIP_DIST=1: without the package)"
                } else {
                    " --dist"
                }
            );
            if !deploy::check(&tools, !skip_dist)? {
                bail!("deploy-check failed (see the FAIL lines above)");
            }
            // Said before the host privileged tests, so that their result stays the
            // closing line when the VM tests are skipped.
            if skip_vm {
                eprintln!(
                    "xtask: PORTX_SKIP_VM=1: skipping the VM tests (Debian 6.1 and 6.12 kernels in QEMU)"
                );
            }
            // The report page is checked in a real browser.
            setup::ensure_commands(&[("chromium", "chromium"), ("prometheus", "prometheus")])?;
            // One test at a time: each loads the BPF programs and times its own
            // namespaces' events.
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
            if !skip_vm {
                eprintln!("xtask: VM tests (set PORTX_SKIP_VM=1 to skip them)");
                let series = vm::KernelChoice::All.series();
                // Its closing line is "N passed, M failed" over both kernels.
                if !vm::run(
                    &tools,
                    &series,
                    &args,
                    Duration::from_secs(vm::TIMEOUT_SECS),
                )? {
                    std::process::exit(1);
                }
            }
        }
    }
    Ok(())
}
