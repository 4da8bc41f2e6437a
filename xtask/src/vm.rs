//! `cargo xtask vm-test`: the privileged tests inside QEMU (TCG) on Debian's 6.1 and
//! 6.12 cloud kernels, so portx is checked on the kernels users run, not only this one.
//!
//! The guest is a busybox initramfs holding the test binary, the portx binary at the
//! path compiled into the tests, the host's `ip`, `ss`, `setpriv`, `unshare` and `sh`
//! with their shared libraries, and the kernel's sock_diag modules. Its `/init` mounts
//! the pseudo-filesystems, runs the harness with its output on the second serial port,
//! writes the exit code to the third, and powers off.

use std::{
    env,
    ffi::OsString,
    fmt::Write as _,
    fs,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use crate::setup::Tools;

/// Wall-clock limit per kernel, in seconds, for `vm-test` and `test` alike (TCG is
/// slow: a full run takes about 4 minutes per kernel here).
pub const TIMEOUT_SECS: u64 = 1500;

/// Guest vCPUs and RAM (MiB).
const CPUS: u32 = 2;
const MEM_MIB: u32 = 1536;
/// Host tools the tests run, copied with their libraries to the same path in the guest.
const GUEST_TOOLS: &[&str] = &["ip", "ss", "setpriv", "unshare", "sh"];
/// Where tools are looked up, on the host and (same order) in the guest: the real
/// tools in /usr come before busybox's applets in /bin.
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Modules a Debian system autoloads when `ss` or portx opens a sock_diag socket; the
/// guest has no modprobe, so /init loads them, in this (dependency) order.
const GUEST_MODULES: &[&str] = &["inet_diag", "tcp_diag", "udp_diag", "mptcp_diag"];
const EXIT_MARK: &str = "PORTX_VM_EXIT=";
const INIT_MARK: &str = "PORTX_VM: init";

/// A kernel series vm-test boots: the newest Debian cloud image of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    V6_1,
    V6_12,
}

impl Series {
    fn label(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }
}

/// `--kernel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    All,
}

impl KernelChoice {
    pub fn series(self) -> Vec<Series> {
        match self {
            KernelChoice::V6_1 => vec![Series::V6_1],
            KernelChoice::V6_12 => vec![Series::V6_12],
            KernelChoice::All => vec![Series::V6_1, Series::V6_12],
        }
    }
}

// ---------------------------------------------------------------------------------
// Host packages

fn find_on(path: &str, name: &str) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn which(name: &str) -> Option<PathBuf> {
    let path = env::var("PATH").unwrap_or_default();
    find_on(&format!("{path}:{GUEST_PATH}"), name)
}

/// apt-get, with `apt-get update` run at most once per vm-test.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn update(&mut self) -> Result<()> {
        if !self.updated {
            self.updated = true;
            eprintln!("xtask: apt-get update");
            quiet(Command::new("apt-get").args(["update", "-qq"]))?;
        }
        Ok(())
    }

    fn install(&mut self, pkgs: &[&str]) -> Result<()> {
        eprintln!("xtask: installing {pkgs:?} with apt-get (VM tests)");
        ensure!(
            which("apt-get").is_some(),
            "no apt-get: install {pkgs:?} by hand"
        );
        self.update()
            .and_then(|()| {
                quiet(
                    Command::new("apt-get")
                        .args(["install", "-y", "-qq", "--no-install-recommends"])
                        .args(pkgs)
                        .env("DEBIAN_FRONTEND", "noninteractive"),
                )
            })
            .map(drop)
            .with_context(|| format!("installing {pkgs:?} (as root) failed"))
    }
}

/// Runs a command, keeping its output unless it fails.
fn quiet(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty());
        bail!(
            "{:?} exited with {}: {}",
            cmd.get_program(),
            out.status,
            last.unwrap_or("").trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Paths of the host programs the VM tests need, installing missing ones.
struct HostTools {
    qemu: PathBuf,
    busybox: PathBuf,
    guest_tools: Vec<PathBuf>,
}

fn is_static_busybox(path: &Path) -> bool {
    fs::read(path)
        .ok()
        .and_then(|elf| elf_interpreter(&elf).ok())
        .is_some_and(|interp| interp.is_none())
}

fn static_busybox() -> Option<PathBuf> {
    [PathBuf::from("/bin/busybox")]
        .into_iter()
        .chain(which("busybox"))
        .find(|p| is_static_busybox(p))
}

fn ensure_host_tools(apt: &mut Apt) -> Result<HostTools> {
    let mut missing = Vec::new();
    if which("qemu-system-x86_64").is_none() {
        missing.push("qemu-system-x86");
    }
    if which("cpio").is_none() {
        missing.push("cpio");
    }
    if static_busybox().is_none() {
        missing.push("busybox-static");
    }
    for tool in ["setpriv", "unshare"] {
        if find_on(GUEST_PATH, tool).is_none() && !missing.contains(&"util-linux") {
            missing.push("util-linux");
        }
    }
    if !missing.is_empty() {
        apt.install(&missing)?;
    }
    let guest_tools = GUEST_TOOLS
        .iter()
        .map(|t| find_on(GUEST_PATH, t).ok_or_else(|| anyhow!("`{t}` not found in {GUEST_PATH}")))
        .collect::<Result<_>>()?;
    Ok(HostTools {
        qemu: which("qemu-system-x86_64")
            .ok_or_else(|| anyhow!("qemu-system-x86_64 not found after installing it"))?,
        busybox: static_busybox().ok_or_else(|| anyhow!("no static busybox at /bin/busybox"))?,
        guest_tools,
    })
}

// ---------------------------------------------------------------------------------
// Kernels

/// A Debian cloud kernel package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
#[derive(Debug, PartialEq, Eq)]
struct KernelPkg {
    name: String,
    version: Vec<u64>,
    signed: bool,
}

fn parse_kernel_pkg(name: &str, series: Series) -> Option<KernelPkg> {
    let rest = name.strip_prefix("linux-image-")?;
    let (ver, signed) = if let Some(v) = rest.strip_suffix("-cloud-amd64") {
        (v, true)
    } else {
        (rest.strip_suffix("-cloud-amd64-unsigned")?, false)
    };
    // "6.1." matches 6.1.0-56, not 6.12.x; the meta-package "6.12" has no dot after.
    if !ver.starts_with(&format!("{}.", series.label())) {
        return None;
    }
    let version: Vec<u64> = ver
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    (version.len() >= 3).then(|| KernelPkg {
        name: name.to_owned(),
        version,
        signed,
    })
}

/// Package names of `series` in `apt-cache search` output, newest first, one per
/// version (the signed image when both exist: either boots under QEMU).
fn select_kernel_packages(apt_cache: &str, series: Series) -> Vec<String> {
    let mut pkgs: Vec<KernelPkg> = apt_cache
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|n| parse_kernel_pkg(n, series))
        .collect();
    pkgs.sort_by(|a, b| b.version.cmp(&a.version).then(b.signed.cmp(&a.signed)));
    pkgs.dedup_by(|later, first| later.version == first.version);
    pkgs.into_iter().map(|p| p.name).collect()
}

/// A kernel ready to boot, from the cache.
struct Kernel {
    package: String,
    release: String,
    vmlinuz: PathBuf,
    /// Decompressed modules in load order.
    modules: Vec<PathBuf>,
}

/// `$PORTX_TOOLS_DIR/kernels`, else `~/.cache/portx/kernels` (as set-up's tools).
fn kernels_dir() -> Result<PathBuf> {
    Ok(crate::setup::tools_dir()?.join("kernels"))
}

fn load_cached(dir: &Path) -> Result<Kernel> {
    let package = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("bad cache dir {}", dir.display()))?
        .to_owned();
    let release = fs::read_to_string(dir.join("release"))?.trim().to_owned();
    let modules = GUEST_MODULES
        .iter()
        .map(|m| dir.join("modules").join(format!("{m}.ko")))
        .filter(|p| p.is_file())
        .collect();
    Ok(Kernel {
        package,
        release,
        vmlinuz: dir.join("vmlinuz"),
        modules,
    })
}

/// The newest kernel of `series` already in the cache.
fn newest_cached(cache: &Path, series: Series) -> Option<Kernel> {
    let mut pkgs: Vec<KernelPkg> = fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| cache.join(n).join("vmlinuz").is_file())
        .filter_map(|n| parse_kernel_pkg(&n, series))
        .collect();
    pkgs.sort_by(|a, b| b.version.cmp(&a.version));
    pkgs.iter()
        .find_map(|p| load_cached(&cache.join(&p.name)).ok())
}

fn find_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => find_files(&p, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

/// Downloads `package`, keeps its vmlinuz and sock_diag modules in `cache/package`.
fn download_kernel(cache: &Path, package: &str, busybox: &Path) -> Result<Kernel> {
    let work = cache.join(format!(".download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = (|| {
        eprintln!(
            "xtask: downloading {package} (once; cached in {})",
            cache.display()
        );
        quiet(
            Command::new("apt-get")
                .args(["download", "-q", package])
                .current_dir(&work),
        )?;
        let deb = fs::read_dir(&work)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| anyhow!("apt-get download left no .deb"))?;
        let tree = work.join("x");
        quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        let vmlinuz = fs::read_dir(tree.join("boot"))
            .context("the package has no /boot")?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .ok_or_else(|| anyhow!("the package has no boot/vmlinuz-*"))?;
        let release = vmlinuz
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .unwrap_or_default()
            .to_owned();
        let entry = work.join("entry");
        fs::create_dir_all(entry.join("modules"))?;
        fs::copy(&vmlinuz, entry.join("vmlinuz"))?;
        fs::write(entry.join("release"), format!("{release}\n"))?;
        let mut files = Vec::new();
        for moddir in ["lib/modules", "usr/lib/modules"] {
            find_files(&tree.join(moddir).join(&release), &mut files);
        }
        for m in GUEST_MODULES {
            let Some(src) = files.iter().find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split_once(".ko"))
                    .is_some_and(|(stem, _)| stem == *m)
            }) else {
                // Built in (or absent): nothing to load.
                continue;
            };
            let dst = entry.join("modules").join(format!("{m}.ko"));
            decompress_module(src, &dst, busybox)?;
        }
        let final_dir = cache.join(package);
        let _ = fs::remove_dir_all(&final_dir);
        fs::rename(&entry, &final_dir)?;
        load_cached(&final_dir)
    })();
    let _ = fs::remove_dir_all(&work);
    result
}

fn decompress_module(src: &Path, dst: &Path, busybox: &Path) -> Result<()> {
    let name = src.to_string_lossy();
    let mut cmd = if name.ends_with(".ko") {
        fs::copy(src, dst)?;
        return Ok(());
    } else if name.ends_with(".xz") {
        let mut c = Command::new(busybox);
        c.args(["xz", "-dc"]);
        c
    } else if name.ends_with(".gz") {
        let mut c = Command::new(busybox);
        c.args(["gzip", "-dc"]);
        c
    } else if name.ends_with(".zst") {
        let mut c = Command::new("zstd");
        c.args(["-q", "-dc"]);
        c
    } else {
        bail!("unknown module compression: {name}");
    };
    let out = fs::File::create(dst)?;
    let st = cmd
        .arg(src)
        .stdout(out)
        .status()
        .with_context(|| format!("decompressing {name}"))?;
    ensure!(st.success(), "decompressing {name} failed ({st})");
    Ok(())
}

/// The newest cloud kernel of `series`, from the cache or downloaded into it.
fn prepare_kernel(apt: &mut Apt, series: Series, busybox: &Path) -> Result<Kernel> {
    let cache = kernels_dir()?;
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let search = || -> Result<Vec<String>> {
        let out = quiet(Command::new("apt-cache").args(["search", "^linux-image-6"]))?;
        Ok(select_kernel_packages(&out, series))
    };
    let mut candidates = search().unwrap_or_default();
    if candidates.is_empty() && which("apt-get").is_some() {
        // A fresh machine may have no package lists yet.
        if apt.update().is_ok() {
            candidates = search().unwrap_or_default();
        }
    }
    let mut errors = Vec::new();
    for pkg in candidates.iter().take(3) {
        let dir = cache.join(pkg);
        if dir.join("vmlinuz").is_file()
            && let Ok(k) = load_cached(&dir)
        {
            return Ok(k);
        }
        match download_kernel(&cache, pkg, busybox) {
            Ok(k) => return Ok(k),
            Err(e) => {
                eprintln!("xtask: warning: {pkg}: {e:#}");
                errors.push(format!("{pkg}: {e:#}"));
                // An older kernel already here beats another download attempt.
                if let Some(k) = newest_cached(&cache, series) {
                    eprintln!("xtask: using the cached {} instead", k.package);
                    return Ok(k);
                }
            }
        }
    }
    if let Some(k) = newest_cached(&cache, series) {
        eprintln!(
            "xtask: warning: apt-cache lists no {} cloud kernel; using the cached {}",
            series.label(),
            k.package
        );
        return Ok(k);
    }
    if candidates.is_empty() {
        bail!(
            "no Debian {} cloud kernel: `apt-cache search linux-image-6 | grep cloud-amd64` lists none \
             (Debian 12 lists them from bookworm and bookworm-security)",
            series.label()
        );
    }
    bail!(
        "downloading a {} kernel failed ({} packages tried; the other errors above): {}",
        series.label(),
        errors.len(),
        errors.first().map_or("", String::as_str)
    )
}

// ---------------------------------------------------------------------------------
// Test binaries

struct Built {
    test_exe: PathBuf,
    portx: PathBuf,
}

/// The `privileged` test executable and the portx binary from cargo's JSON messages.
fn parse_cargo_artifacts(json: &str) -> Result<Built> {
    let mut test_exe = None;
    let mut portx = None;
    for line in json.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let kinds = v["target"]["kind"].as_array().cloned().unwrap_or_default();
        let name = v["target"]["name"].as_str().unwrap_or("");
        if name == "privileged" && kinds.iter().any(|k| k == "test") {
            test_exe = Some(PathBuf::from(exe));
        } else if name == "portx" && kinds.iter().any(|k| k == "bin") {
            portx = Some(PathBuf::from(exe));
        }
    }
    Ok(Built {
        test_exe: test_exe
            .ok_or_else(|| anyhow!("cargo reported no executable for the `privileged` test"))?,
        portx: portx.ok_or_else(|| anyhow!("cargo reported no portx binary"))?,
    })
}

fn build(tools: &Tools) -> Result<Built> {
    eprintln!("xtask: building the privileged tests for the VM");
    let out = crate::cargo(
        tools,
        &[
            "test",
            "--package",
            "portx",
            "--test",
            "privileged",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ],
    )?
    .stderr(Stdio::inherit())
    .output()
    .context("starting cargo test --no-run")?;
    ensure!(out.status.success(), "building the privileged tests failed");
    let built = parse_cargo_artifacts(&String::from_utf8_lossy(&out.stdout))?;
    // The tests run env!("CARGO_BIN_EXE_portx"); the guest has portx at that path.
    let exe = fs::read(&built.test_exe)?;
    let needle = built.portx.as_os_str().as_encoded_bytes();
    if !exe.windows(needle.len()).any(|w| w == needle) {
        eprintln!(
            "xtask: warning: {} does not name {}; the tests may not find portx",
            built.test_exe.display(),
            built.portx.display()
        );
    }
    Ok(built)
}

// ---------------------------------------------------------------------------------
// The initramfs

/// The ELF interpreter (`PT_INTERP`) of a 64-bit little-endian ELF file; None when
/// static.
fn elf_interpreter(elf: &[u8]) -> Result<Option<String>> {
    ensure!(elf.get(..4) == Some(b"\x7fELF"), "not an ELF file");
    ensure!(
        elf.get(4) == Some(&2) && elf.get(5) == Some(&1),
        "not a 64-bit little-endian ELF file"
    );
    let bytes = |o: usize, n: usize| elf.get(o..o + n).ok_or_else(|| anyhow!("truncated ELF"));
    let u16_at = |o| -> Result<usize> { Ok(u16::from_le_bytes(bytes(o, 2)?.try_into()?).into()) };
    let u64_at = |o| -> Result<usize> {
        Ok(usize::try_from(u64::from_le_bytes(
            bytes(o, 8)?.try_into()?,
        ))?)
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(bytes(ph, 4)?.try_into()?) == PT_INTERP {
            let path = bytes(u64_at(ph + 8)?, u64_at(ph + 32)?)?;
            let path = path.split(|&b| b == 0).next().unwrap_or_default();
            return Ok(Some(String::from_utf8(path.to_vec())?));
        }
    }
    Ok(None)
}

/// Absolute library paths in `ldd` output; an unresolved library is an error.
fn parse_ldd(out: &str) -> Result<Vec<String>> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim) {
        if let Some((name, target)) = line.split_once("=>") {
            let target = target.trim();
            ensure!(
                !target.starts_with("not found"),
                "library {} not found",
                name.trim()
            );
            if let Some(path) = target
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            {
                libs.push(path.to_owned());
            }
        } else if let Some(path) = line
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libs.push(path.to_owned());
        }
    }
    Ok(libs)
}

fn guest_path(root: &Path, host: &Path) -> Result<PathBuf> {
    Ok(root.join(host.strip_prefix("/").context("not an absolute path")?))
}

/// Copies a host file (following symlinks) to the same path under `root`.
fn stage_file(root: &Path, host: &Path) -> Result<()> {
    let dst = guest_path(root, host)?;
    if dst.exists() {
        return Ok(());
    }
    fs::create_dir_all(dst.parent().context("no parent")?)?;
    fs::copy(host, &dst).with_context(|| format!("copying {}", host.display()))?;
    Ok(())
}

/// Copies a binary and what it needs to start (libraries, ELF interpreter).
fn stage_binary(root: &Path, host: &Path) -> Result<()> {
    stage_file(root, host)?;
    let interp =
        elf_interpreter(&fs::read(host)?).with_context(|| format!("reading {}", host.display()))?;
    if let Some(interp) = interp {
        stage_file(root, Path::new(&interp))?;
        let ldd = quiet(Command::new("ldd").arg(host))
            .with_context(|| format!("ldd {}", host.display()))?;
        for lib in parse_ldd(&ldd).with_context(|| format!("ldd {}", host.display()))? {
            stage_file(root, Path::new(&lib))?;
        }
    }
    Ok(())
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What /init runs.
struct InitSpec<'a> {
    test_exe: &'a str,
    args: &'a [String],
    /// Module names, in load order, at /portx-vm/NAME.ko.
    modules: &'a [String],
}

/// /init: mounts, loopback, modules, then the harness with its output on ttyS1 and
/// its exit code on ttyS2 (a port of its own: console messages cannot split it).
fn init_script(spec: &InitSpec) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         # Generated by `cargo xtask vm-test` (xtask/src/vm.rs).\n\
         # --install does not replace the host binaries already in place.\n\
         /bin/busybox --install -s /bin\n",
    );
    let _ = writeln!(s, "export PATH={GUEST_PATH} HOME=/root");
    // /tmp is part of the initramfs, not a tmpfs over it: the portx binary may live
    // under /tmp (CARGO_TARGET_DIR) at the path compiled into the tests.
    s.push_str(
        "mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t tmpfs -o mode=0755 tmpfs /run\n\
         mount -t tracefs tracefs /sys/kernel/tracing\n\
         mount -t debugfs debugfs /sys/kernel/debug\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t securityfs securityfs /sys/kernel/security\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         ip link set lo up\n\
         stty -F /dev/ttyS1 raw -echo\n\
         stty -F /dev/ttyS2 raw -echo\n\
         ulimit -l unlimited\n",
    );
    let _ = writeln!(s, "echo \"{INIT_MARK} on $(uname -r)\"");
    for m in spec.modules {
        let _ = writeln!(
            s,
            "insmod /portx-vm/{m}.ko || echo 'PORTX_VM: insmod {m} failed'"
        );
    }
    // Emulation is slow: give each wait inside a test far longer than on the host.
    // PORTX_IN_VM: tests that need host programs the guest lacks (a browser) say so
    // and skip that part; the host run has them.
    s.push_str("cd /tmp\nexport RUST_BACKTRACE=1 PORTX_TEST_WAIT_SECS=300 PORTX_IN_VM=1\n");
    s.push_str(&sh_quote(spec.test_exe));
    for a in ["--test-threads=1", "--color=never"]
        .into_iter()
        .chain(spec.args.iter().map(String::as_str))
    {
        s.push(' ');
        s.push_str(&sh_quote(a));
    }
    s.push_str(" </dev/null >/dev/ttyS1 2>&1\n");
    let _ = writeln!(s, "rc=$?\necho \"{EXIT_MARK}$rc\" >/dev/ttyS2");
    let _ = writeln!(s, "echo \"{EXIT_MARK}$rc\"\nsync\npoweroff -f");
    s
}

/// Paths relative to `root` ("." first), every directory before its contents.
fn list_tree(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(root.join(rel))?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        out.push(r.clone());
        if e.file_type()?.is_dir() {
            list_tree(root, &r, out)?;
        }
    }
    Ok(())
}

/// The initramfs contents shared by every kernel.
fn stage_common(root: &Path, built: &Built, host: &HostTools) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "run", "etc", "root", "var", "portx-vm",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    symlink("../run", root.join("var/run"))?;
    fs::copy(&host.busybox, root.join("bin/busybox"))?;
    stage_binary(root, &built.test_exe)?;
    stage_binary(root, &built.portx)?;
    for tool in &host.guest_tools {
        stage_binary(root, tool)?;
    }
    // Readable by the unprivileged user the not-root test becomes, whatever the umask
    // (and the staging directory's own mode) was; /tmp world-writable and sticky.
    let mut all = Vec::new();
    list_tree(root, Path::new(""), &mut all)?;
    for p in std::iter::once(PathBuf::new()).chain(all) {
        let full = root.join(&p);
        let meta = fs::symlink_metadata(&full)?;
        let mode = if meta.file_type().is_symlink() {
            continue;
        } else if p == Path::new("tmp") {
            0o1777
        } else if meta.is_dir() || meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        fs::set_permissions(&full, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Adds one kernel's modules and /init, and writes the cpio archive.
fn write_initramfs(
    root: &Path,
    kernel: &Kernel,
    spec_args: &[String],
    test_exe: &str,
    out: &Path,
) -> Result<()> {
    let mods = root.join("portx-vm");
    fs::remove_dir_all(&mods)?;
    fs::create_dir_all(&mods)?;
    let mut names = Vec::new();
    for m in &kernel.modules {
        let name = m
            .file_stem()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("bad module path"))?;
        fs::copy(m, mods.join(format!("{name}.ko")))?;
        names.push(name.to_owned());
    }
    let init = init_script(&InitSpec {
        test_exe,
        args: spec_args,
        modules: &names,
    });
    fs::write(root.join("init"), init)?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    let mut list = vec![PathBuf::from(".")];
    list_tree(root, Path::new(""), &mut list)?;
    let mut names = Vec::new();
    for p in list {
        names.extend_from_slice(p.as_os_str().as_encoded_bytes());
        names.push(b'\n');
    }
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("starting cpio")?;
    cpio.stdin.take().context("cpio stdin")?.write_all(&names)?;
    let st = cpio.wait()?;
    ensure!(st.success(), "cpio failed ({st})");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Booting

/// The exit code the guest's /init reported.
fn parse_exit(log: &str) -> Option<i32> {
    log.rsplit(EXIT_MARK)
        .next()
        .filter(|_| log.contains(EXIT_MARK))
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

struct Boot {
    exit: Option<i32>,
    timed_out: bool,
    output: String,
    console: String,
    secs: f64,
}

/// Appends newly written bytes of `file` and prints each complete line with `prefix`.
struct Streamer {
    file: Option<fs::File>,
    pos: u64,
    pending: Vec<u8>,
    all: Vec<u8>,
    prefix: String,
}

impl Streamer {
    fn poll(&mut self, path: &Path) {
        if self.file.is_none() {
            self.file = fs::File::open(path).ok();
        }
        let Some(f) = self.file.as_mut() else { return };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.pos)).is_err() || f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.pos += buf.len() as u64;
        self.all.extend_from_slice(&buf);
        self.pending.extend_from_slice(&buf);
        while let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            println!("{}{}", self.prefix, line.trim_end_matches(['\n', '\r']));
        }
    }

    fn finish(&mut self, path: &Path) {
        self.poll(path);
        if !self.pending.is_empty() {
            println!(
                "{}{}",
                self.prefix,
                String::from_utf8_lossy(&self.pending).trim_end()
            );
            self.pending.clear();
        }
    }
}

fn boot(
    qemu: &Path,
    kernel: &Kernel,
    initrd: &Path,
    dir: &Path,
    prefix: &str,
    timeout: Duration,
) -> Result<Boot> {
    let console = dir.join("console.log");
    let output = dir.join("output.log");
    let exit = dir.join("exit.log");
    for f in [&console, &output, &exit] {
        fs::write(f, b"")?;
    }
    let chardev = |id: &str, p: &Path| format!("file,id={id},path={}", p.display());
    let start = Instant::now();
    let mut child = Command::new(qemu)
        // One host thread for all vCPUs: with thread=multi, 6.12 oopsed ("Oops: int3"
        // in syscall_exit_to_user_mode_prepare) when a tracepoint's static key was
        // patched while the other vCPU ran the old code; about as fast here.
        .args(["-accel", "tcg,thread=single", "-cpu", "max"])
        .args(["-m", &MEM_MIB.to_string(), "-smp", &CPUS.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args([
            "-chardev",
            &chardev("con", &console),
            "-serial",
            "chardev:con",
        ])
        .args([
            "-chardev",
            &chardev("out", &output),
            "-serial",
            "chardev:out",
        ])
        .args(["-chardev", &chardev("rc", &exit), "-serial", "chardev:rc"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 oops=panic rdinit=/init loglevel=4",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("qemu.log"))?)
        .spawn()
        .with_context(|| format!("starting {}", qemu.display()))?;
    let mut stream = Streamer {
        file: None,
        pos: 0,
        pending: Vec::new(),
        all: Vec::new(),
        prefix: prefix.to_owned(),
    };
    let mut timed_out = false;
    loop {
        stream.poll(&output);
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    stream.finish(&output);
    let secs = start.elapsed().as_secs_f64();
    let console_text =
        String::from_utf8_lossy(&fs::read(&console).unwrap_or_default()).into_owned();
    let qemu_err = fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
    let exit_text = fs::read_to_string(&exit).unwrap_or_default();
    Ok(Boot {
        exit: parse_exit(&exit_text).or_else(|| parse_exit(&console_text)),
        timed_out,
        output: String::from_utf8_lossy(&stream.all).into_owned(),
        console: format!("{qemu_err}{console_text}"),
        secs,
    })
}

// ---------------------------------------------------------------------------------
// Results

/// What libtest printed: its summary line and each failure's first message line.
#[derive(Debug, Default, PartialEq)]
struct Libtest {
    /// (passed, failed) from `test result: ...`.
    summary: Option<(u32, u32)>,
    /// Tests reported `ok` (used when the summary is missing, e.g. on a timeout).
    ok: u32,
    /// (test, first line of its error).
    failed: Vec<(String, String)>,
}

fn parse_libtest(out: &str) -> Libtest {
    let mut r = Libtest::default();
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    let mut pending: Option<&str> = None;
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |what: &str| {
                rest.split(';').find_map(|part| {
                    let mut w = part.split_whitespace().rev();
                    (w.next() == Some(what)).then(|| w.next()?.parse().ok())?
                })
            };
            if let (Some(p), Some(f)) = (count("passed"), count("failed")) {
                r.summary = Some((p, f));
            }
        } else if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" ----"))
        {
            let first = lines[i + 1..]
                .iter()
                .find(|l| !l.trim().is_empty())
                .map_or("", |l| l.trim());
            r.failed.retain(|(n, _)| n != name);
            r.failed.push((name.to_owned(), first.to_owned()));
        } else {
            // "test NAME ... ok", or the outcome on a later line of its own when the
            // test wrote to stderr in between.
            let (name, outcome) = match line
                .strip_prefix("test ")
                .and_then(|l| l.split_once(" ... "))
            {
                Some((name, outcome)) => (name.trim(), outcome.trim()),
                None => match pending {
                    Some(name) => (name, line.trim()),
                    None => continue,
                },
            };
            pending = Some(name);
            if outcome == "ok" {
                r.ok += 1;
                pending = None;
            } else if outcome == "FAILED" {
                if !r.failed.iter().any(|(n, _)| n == name) {
                    r.failed.push((name.to_owned(), String::new()));
                }
                pending = None;
            }
        }
    }
    r
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Passed,
    Failed,
    Timeout,
    Error,
}

struct KernelResult {
    series: Series,
    kernel: String,
    outcome: Outcome,
    passed: u32,
    failed: u32,
    failures: Vec<(String, String)>,
    secs: f64,
}

fn summarize(results: &[KernelResult]) -> String {
    let mut s = String::from("\nVM test summary\n");
    let _ = writeln!(
        s,
        "{:<34} {:<8} {:>6} {:>6} {:>7}",
        "kernel", "result", "passed", "failed", "seconds"
    );
    for r in results {
        let outcome = match r.outcome {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        };
        let _ = writeln!(
            s,
            "{:<34} {:<8} {:>6} {:>6} {:>7.0}",
            r.kernel, outcome, r.passed, r.failed, r.secs
        );
    }
    for r in results {
        for (name, err) in &r.failures {
            // The first line of an error can be a whole JSON event: keep the table short.
            let err: String = if err.chars().count() > 160 {
                err.chars().take(160).chain("...".chars()).collect()
            } else {
                err.clone()
            };
            let _ = writeln!(s, "  [{}] {name}: {err}", r.series.label());
        }
    }
    // A kernel whose run did not finish counts as one failure, so the closing line
    // never reads "0 failed" for a run that did not pass.
    let passed: u32 = results.iter().map(|r| r.passed).sum();
    let failed: u32 = results
        .iter()
        .map(|r| r.failed + u32::from(matches!(r.outcome, Outcome::Timeout | Outcome::Error)))
        .sum();
    let _ = write!(s, "{passed} passed, {failed} failed");
    s
}

/// Builds the tests, boots each kernel, prints the summary; true when all passed.
pub fn run(
    tools: &Tools,
    series: &[Series],
    filter: &[OsString],
    timeout: Duration,
) -> Result<bool> {
    let mut apt = Apt::default();
    let host = ensure_host_tools(&mut apt)?;
    let built = build(tools)?;
    let args = filter
        .iter()
        .map(|a| {
            a.to_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("test filter {a:?} is not UTF-8"))
        })
        .collect::<Result<Vec<_>>>()?;
    let test_exe = built
        .test_exe
        .to_str()
        .ok_or_else(|| anyhow!("test path is not UTF-8"))?
        .to_owned();
    // <target>/debug/deps/privileged-HASH -> <target>/vm-test
    let work = built
        .test_exe
        .ancestors()
        .nth(3)
        .map_or_else(env::temp_dir, Path::to_path_buf)
        .join("vm-test");
    let root = work.join("root");
    stage_common(&root, &built, &host)?;

    let mut results = Vec::new();
    for &s in series {
        let label = s.label();
        let fail = |kernel: String, msg: String| {
            eprintln!("xtask: vm-test {label}: {msg}");
            KernelResult {
                series: s,
                kernel,
                outcome: Outcome::Error,
                passed: 0,
                failed: 0,
                failures: Vec::new(),
                secs: 0.0,
            }
        };
        let kernel = match prepare_kernel(&mut apt, s, &host.busybox) {
            Ok(k) => k,
            Err(e) => {
                results.push(fail(format!("{label} (none)"), format!("{e:#}")));
                continue;
            }
        };
        let dir = work.join(&kernel.release);
        fs::create_dir_all(&dir)?;
        let initrd = dir.join("initramfs.cpio");
        if let Err(e) = write_initramfs(&root, &kernel, &args, &test_exe, &initrd) {
            results.push(fail(
                kernel.release.clone(),
                format!("building the initramfs: {e:#}"),
            ));
            continue;
        }
        eprintln!(
            "xtask: vm-test {label}: booting {} ({CPUS} vCPUs, {MEM_MIB} MiB, TCG, timeout {} s; logs in {})",
            kernel.release,
            timeout.as_secs(),
            dir.display()
        );
        let b = match boot(
            &host.qemu,
            &kernel,
            &initrd,
            &dir,
            &format!("[{label}] "),
            timeout,
        ) {
            Ok(b) => b,
            Err(e) => {
                results.push(fail(kernel.release.clone(), format!("{e:#}")));
                continue;
            }
        };
        let t = parse_libtest(&b.output);
        let (passed, failed) = t
            .summary
            .unwrap_or((t.ok, u32::try_from(t.failed.len()).unwrap_or(u32::MAX)));
        let outcome = match b.exit {
            _ if b.timed_out => Outcome::Timeout,
            Some(0) => Outcome::Passed,
            Some(_) => Outcome::Failed,
            None => Outcome::Error,
        };
        match outcome {
            Outcome::Timeout => eprintln!(
                "xtask: vm-test {label}: timed out after {} s; console log tail:\n{}",
                timeout.as_secs(),
                tail(&b.console, 30)
            ),
            Outcome::Error => {
                let why = if !b.console.contains(INIT_MARK) {
                    "the kernel did not reach /init"
                } else if b.console.contains("Kernel panic") {
                    "the guest kernel panicked"
                } else {
                    "the guest stopped without reporting an exit code"
                };
                eprintln!(
                    "xtask: vm-test {label}: {why} ({:.0} s); console log tail:\n{}",
                    b.secs,
                    tail(&b.console, 30)
                );
            }
            _ => eprintln!(
                "xtask: vm-test {label}: {} exited with {} after {:.0} s",
                kernel.release,
                b.exit.unwrap_or(-1),
                b.secs
            ),
        }
        results.push(KernelResult {
            series: s,
            kernel: kernel.release.clone(),
            outcome,
            passed,
            failed,
            failures: t.failed,
            secs: b.secs,
        });
    }
    let all_passed = results.iter().all(|r| r.outcome == Outcome::Passed);
    println!("{}", summarize(&results));
    Ok(all_passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const APT_CACHE: &str = "\
linux-image-6.1.0-47-cloud-amd64-dbg - Debug symbols for linux-image-6.1.0-47-cloud-amd64
linux-image-6.1.0-9-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-50-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-50-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-56-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.12-cloud-amd64 - Linux for x86-64 cloud (meta-package)
linux-image-6.12.9+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.117+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.117+deb12-cloud-amd64-dbg - Debug symbols
linux-image-6.1.0-50-amd64 - Linux 6.1 for 64-bit PCs (signed)
";

    #[test]
    fn selects_newest_cloud_kernel_per_series() {
        assert_eq!(
            select_kernel_packages(APT_CACHE, Series::V6_1),
            [
                "linux-image-6.1.0-56-cloud-amd64-unsigned",
                "linux-image-6.1.0-50-cloud-amd64",
                "linux-image-6.1.0-9-cloud-amd64",
            ]
        );
        assert_eq!(
            select_kernel_packages(APT_CACHE, Series::V6_12),
            [
                "linux-image-6.12.117+deb12-cloud-amd64",
                "linux-image-6.12.9+deb12-cloud-amd64",
            ]
        );
        assert!(select_kernel_packages("", Series::V6_1).is_empty());
    }

    #[test]
    fn parses_libtest_summary_and_failures() {
        let out = "\
running 3 tests
test exhaustion_ipv4 ... ok
test bind_conflict   ... FAILED
test top_agrees      ... warning: something on stderr
FAILED

failures:

---- bind_conflict ----
portx did not report bind_error within 20s; it printed:
{}

---- top_agrees ----

attaching: no such file


failures:
    bind_conflict
    top_agrees

test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.10s

";
        let t = parse_libtest(out);
        assert_eq!(t.summary, Some((1, 2)));
        assert_eq!(t.ok, 1);
        assert_eq!(
            t.failed,
            [
                (
                    "bind_conflict".to_owned(),
                    "portx did not report bind_error within 20s; it printed:".to_owned()
                ),
                (
                    "top_agrees".to_owned(),
                    "attaching: no such file".to_owned()
                ),
            ]
        );
        let ok = parse_libtest(
            "test result: ok. 16 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\r\n",
        );
        assert_eq!(ok.summary, Some((16, 0)));
        // Cut short: no summary, the per-test lines still count, outcomes on their own
        // line too.
        let cut =
            parse_libtest("test a ... ok\ntest b ... FAILED\ntest c ... hooks: x\nok\ntest d ... ");
        assert_eq!((cut.summary, cut.ok, cut.failed.len()), (None, 2, 1));
    }

    #[test]
    fn init_script_runs_the_harness_and_reports_its_exit_code() {
        let args = vec!["top_".to_owned(), "it's".to_owned()];
        let modules = vec!["inet_diag".to_owned(), "tcp_diag".to_owned()];
        let s = init_script(&InitSpec {
            test_exe: "/t/privileged-abc",
            args: &args,
            modules: &modules,
        });
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(
            s.contains("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin ")
        );
        for m in [
            "proc proc /proc",
            "sysfs sysfs /sys",
            "tmpfs -o mode=0755 tmpfs /run",
            "tracefs tracefs /sys/kernel/tracing",
            "bpf bpf /sys/fs/bpf",
            "cgroup2 cgroup2 /sys/fs/cgroup",
        ] {
            assert!(s.contains(&format!("mount -t {m}")), "{m}");
        }
        assert!(!s.contains("tmpfs /tmp"));
        let inet = s.find("insmod /portx-vm/inet_diag.ko").unwrap();
        let tcp = s.find("insmod /portx-vm/tcp_diag.ko").unwrap();
        assert!(inet < tcp);
        assert!(s.contains(
            "'/t/privileged-abc' '--test-threads=1' '--color=never' 'top_' 'it'\\''s' </dev/null >/dev/ttyS1 2>&1\n"
        ));
        assert!(s.contains("echo \"PORTX_VM_EXIT=$rc\" >/dev/ttyS2"));
        assert!(s.trim_end().ends_with("poweroff -f"));
    }

    #[test]
    fn parses_exit_code() {
        assert_eq!(parse_exit("PORTX_VM_EXIT=101\r\n"), Some(101));
        assert_eq!(
            parse_exit("[ 1.0] x\nPORTX_VM_EXIT=0\n[ 2.0] reboot"),
            Some(0)
        );
        assert_eq!(parse_exit("[ 1.0] Kernel panic"), None);
    }

    #[test]
    fn reads_elf_interpreter() {
        // ELF64 header + one PT_LOAD and one PT_INTERP program header + the path.
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        let ph = 64 + 56;
        let interp = b"/lib64/ld-linux-x86-64.so.2\0";
        elf[ph..ph + 4].copy_from_slice(&3u32.to_le_bytes());
        let at = elf.len() as u64;
        elf[ph + 8..ph + 16].copy_from_slice(&at.to_le_bytes());
        elf[ph + 32..ph + 40].copy_from_slice(&(interp.len() as u64).to_le_bytes());
        elf.extend_from_slice(interp);
        assert_eq!(
            elf_interpreter(&elf).unwrap().as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        // Static: no PT_INTERP.
        elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(elf_interpreter(&elf).unwrap(), None);
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn parses_ldd() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    #[test]
    fn summary_ends_with_totals() {
        let r = |series, outcome, passed, failed| KernelResult {
            series,
            kernel: "k".to_owned(),
            outcome,
            passed,
            failed,
            failures: vec![("t".to_owned(), "boom".to_owned())],
            secs: 1.0,
        };
        let s = summarize(&[
            r(Series::V6_1, Outcome::Failed, 14, 2),
            r(Series::V6_12, Outcome::Timeout, 3, 0),
        ]);
        assert!(s.contains("  [6.1] t: boom\n"));
        assert_eq!(s.lines().last(), Some("17 passed, 3 failed"));
    }
}
