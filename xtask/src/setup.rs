//! Idempotent set-up of what building and testing portx needs: the nightly toolchain
//! with rust-src (for `-Z build-std=core` on the BPF target), bpf-linker built against
//! that nightly's own LLVM, and the system tools the privileged tests drive.
//!
//! Each step says what it is doing; a failing step says which step, why, and what to do.

use std::{
    env,
    ffi::OsString,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

/// The toolchain aya-build uses for the BPF crate.
const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors bpf-linker 0.13 has a cargo feature for.
const BPF_LINKER_LLVM: &[u32] = &[19, 20, 21, 22];

/// A step's failure: which step, why, what to do.
fn step_err(step: &str, why: impl std::fmt::Display, todo: &str) -> anyhow::Error {
    anyhow!("setup step `{step}` failed: {why}\n  what to do: {todo}")
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} exited with {st}");
    }
    Ok(())
}

/// What `rustc +nightly -vV` says about itself.
pub struct Nightly {
    pub commit: String,
    pub llvm_major: u32,
    pub sysroot: PathBuf,
}

fn nightly() -> Result<Nightly> {
    let vv = output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    let field = |name: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| anyhow!("`rustc +{NIGHTLY} -vV` has no `{name}` line"))
    };
    let commit = field("commit-hash:")?;
    let llvm = field("LLVM version:")?;
    let llvm_major = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("cannot parse LLVM version `{llvm}`"))?;
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?.trim(),
    );
    Ok(Nightly {
        commit: commit.chars().take(12).collect(),
        llvm_major,
        sysroot,
    })
}

/// Where set-up keeps what it builds: `$PORTX_TOOLS_DIR`, else `~/.cache/portx`.
pub fn tools_dir() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("PORTX_TOOLS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let home = env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?;
    Ok(PathBuf::from(home).join(".cache").join("portx"))
}

fn ensure_nightly() -> Result<Nightly> {
    let step = "nightly toolchain";
    if let Ok(n) = nightly() {
        return Ok(n);
    }
    eprintln!("xtask: installing the {NIGHTLY} toolchain (minimal profile)");
    status(Command::new("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))
        .map_err(|e| {
            step_err(
                step,
                e,
                "install a nightly toolchain with rustup (`rustup toolchain install nightly`)",
            )
        })?;
    nightly().map_err(|e| step_err(step, e, "check `rustc +nightly -vV`"))
}

fn ensure_rust_src(n: &Nightly) -> Result<()> {
    let src = n.sysroot.join("lib/rustlib/src/rust/library/core");
    if src.is_dir() {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the {NIGHTLY} toolchain");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
        .map_err(|e| {
            step_err(
                "rust-src",
                e,
                "run `rustup component add rust-src --toolchain nightly`",
            )
        })
}

/// The nightly's own LLVM shared library (`lib/libLLVM.so.<ver>-rust-<ver>-nightly`).
fn nightly_llvm(n: &Nightly) -> Result<PathBuf> {
    let lib = n.sysroot.join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("libLLVM.so.")
            || (name.starts_with("libLLVM-") && name.ends_with(".so"))
        {
            return Ok(path);
        }
    }
    bail!("no libLLVM shared library in {}", lib.display())
}

/// Builds bpf-linker against the nightly's LLVM, once per nightly (keyed by its commit).
/// Returns the directory holding the `bpf-linker` binary.
fn ensure_bpf_linker(n: &Nightly) -> Result<PathBuf> {
    let step = "bpf-linker";
    let root = tools_dir()?.join(format!("bpf-linker-{}", n.commit));
    let bin_dir = root.join("bin");
    let linker = bin_dir.join("bpf-linker");
    // A linker whose LLVM is gone (toolchain updated in place) fails to start: rebuild.
    if linker.is_file() && output(Command::new(&linker).arg("--version")).is_ok() {
        return Ok(bin_dir);
    }
    if !BPF_LINKER_LLVM.contains(&n.llvm_major) {
        return Err(step_err(
            step,
            format!(
                "the {NIGHTLY} toolchain uses LLVM {}, bpf-linker {BPF_LINKER_VERSION} supports {BPF_LINKER_LLVM:?}",
                n.llvm_major
            ),
            "use a nightly whose LLVM bpf-linker supports, or raise BPF_LINKER_VERSION in xtask/src/setup.rs",
        ));
    }
    let llvm = nightly_llvm(n).map_err(|e| {
        step_err(
            step,
            e,
            "reinstall the nightly toolchain (`rustup toolchain install nightly`)",
        )
    })?;
    // bpf-linker's build links `-lLLVM` from $LLVM_PREFIX/lib and records that directory
    // as its rpath, so the prefix must stay where it is.
    let prefix = root.join("llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let file_name = llvm.file_name().ok_or_else(|| anyhow!("bad LLVM path"))?;
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        let _ = fs::remove_file(&link);
        symlink(&llvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute, once per toolchain)",
        llvm.display()
    );
    status(
        Command::new("cargo")
            .args([
                &format!("+{NIGHTLY}"),
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{}", n.llvm_major),
                "--root",
            ])
            .arg(&root)
            .env("LLVM_PREFIX", &prefix),
    )
    .map_err(|e| {
        step_err(
            step,
            e,
            "check that crates.io is reachable and a C compiler (gcc) is installed, then rerun `cargo xtask setup`",
        )
    })?;
    output(Command::new(&linker).arg("--version"))
        .map_err(|e| step_err(step, e, "remove the folder and rerun `cargo xtask setup`"))?;
    Ok(bin_dir)
}

fn on_path(binary: &str) -> bool {
    env::var_os("PATH").is_some_and(|p| env::split_paths(&p).any(|d| d.join(binary).is_file()))
}

/// Installs Debian packages for commands the tests run, when they are missing.
pub fn ensure_commands(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// Installs Debian packages with apt-get.
pub fn apt_install(missing: &[&str]) -> Result<()> {
    let step = "system packages";
    let todo = "install them with apt-get (as root), or your distribution's package manager";
    if !on_path("apt-get") {
        return Err(step_err(
            step,
            format!("missing {missing:?} and no apt-get"),
            todo,
        ));
    }
    eprintln!("xtask: installing {missing:?} with apt-get");
    status(Command::new("apt-get").args(["update", "-qq"])).map_err(|e| step_err(step, e, todo))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .map_err(|e| step_err(step, e, todo))
}

/// Everything set-up provides, for the other commands.
pub struct Tools {
    pub bpf_linker_dir: PathBuf,
}

impl Tools {
    /// PATH with bpf-linker's directory first.
    pub fn path(&self) -> Result<OsString> {
        let current = env::var_os("PATH").unwrap_or_default();
        let dirs = std::iter::once(self.bpf_linker_dir.clone()).chain(env::split_paths(&current));
        env::join_paths(dirs).context("building PATH")
    }
}

pub fn run(for_tests: bool) -> Result<Tools> {
    let n = ensure_nightly()?;
    ensure_rust_src(&n)?;
    let bpf_linker_dir = ensure_bpf_linker(&n)?;
    if for_tests {
        ensure_commands(&[("ip", "iproute2"), ("ss", "iproute2")])?;
    }
    Ok(Tools { bpf_linker_dir })
}

/// Tracefs for a manual `portx` run is mounted by portx itself; nothing to do here.
pub fn describe(tools: &Tools) -> String {
    format!(
        "bpf-linker: {}\nadd it to PATH to run cargo directly: export PATH={}:$PATH",
        tools.bpf_linker_dir.join("bpf-linker").display(),
        Path::new(&tools.bpf_linker_dir).display()
    )
}
