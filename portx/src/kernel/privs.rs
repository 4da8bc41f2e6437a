//! Least privilege for long-running commands (`portx serve`): once the programs are
//! attached and the baseline taken, keep only the capabilities later work still uses.
//!
//! What needs what after start-up:
//! - reading the ring buffer, the drop counter map, sysctl files and sock_diag
//!   (drift check): nothing; the fds were opened at start, in each namespace. (Kernels
//!   before 6.x check `CAP_BPF` on every bpf() call when unprivileged BPF is disabled,
//!   which the drop counter's map lookup is: [`needs_bpf_for_maps`] finds out.)
//!   Running the flush program on a CPU (`BPF_PROG_TEST_RUN` on the program's fd, the
//!   accounting path's per-CPU batches) is a bpf() call like those: nothing more.
//! - a namespace first seen in an event (discovery): `setns` into it
//!   (`CAP_SYS_ADMIN`), opening `/proc/PID/ns/net` of a process of any user
//!   (`CAP_SYS_PTRACE`: ptrace-read access), and reading every process's `/proc/PID/fd`
//!   to name socket owners (`CAP_DAC_READ_SEARCH` for other users' directories,
//!   `CAP_SYS_PTRACE` for the fd links). With `--netns` the kernel filters events to
//!   one namespace whose baseline is taken at start, so there is no discovery.
//!
//! Capabilities are per thread on Linux: every thread that exists when they are
//! dropped must drop its own ([`drop_to`] acts on the calling thread). `portx serve`
//! has two: the event loop (tokio's current-thread runtime) and the prober, which is
//! asked to drop too; threads the prober starts later inherit its reduced sets.

use anyhow::{Context as _, Result, bail};
pub use caps::{CapSet, Capability, CapsHashSet};

/// A capability kept after start-up, and why.
pub type Kept = Vec<(Capability, &'static str)>;

/// What stays after start-up: discovery's needs, or nothing.
pub fn needed_after_start(discovery: bool) -> Kept {
    if !discovery {
        return Vec::new();
    }
    vec![
        (
            Capability::CAP_SYS_ADMIN,
            "setns() into a namespace first seen later, to open its sock_diag socket and sysctl files",
        ),
        (
            Capability::CAP_SYS_PTRACE,
            "open /proc/PID/ns/net and /proc/PID/fd links of other users' processes (discovery, socket owners)",
        ),
        (
            Capability::CAP_DAC_READ_SEARCH,
            "list other users' /proc/PID/fd directories (socket owners of a new namespace)",
        ),
    ]
}

/// Refuses to start, in one line, when a capability needed later is not there now.
pub fn check_start(kept: &Kept) -> Result<()> {
    for (cap, why) in kept {
        let has = caps::has_cap(None, CapSet::Effective, *cap)
            .with_context(|| format!("reading capabilities ({cap})"))?;
        if !has {
            bail!("missing {cap}, needed to {why}; run as root, or with --netns to need fewer");
        }
    }
    Ok(())
}

/// Leaves this thread only `keep`: drops the rest from the bounding set (so nothing
/// can regain them through exec), the ambient and inheritable sets, and the effective
/// and permitted sets (permitted last: dropping the bounding set needs `CAP_SETPCAP`).
pub fn drop_to(keep: &CapsHashSet) -> Result<()> {
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient set")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable set")?;
    caps::set(None, CapSet::Effective, keep).context("setting the effective set")?;
    caps::set(None, CapSet::Permitted, keep).context("setting the permitted set")?;
    Ok(())
}

/// Lowers only the effective set (permitted stays, so this can be undone).
pub fn set_effective(caps_: &CapsHashSet) -> Result<()> {
    caps::set(None, CapSet::Effective, caps_).context("setting the effective set")
}

/// Whether `probe` (a bpf() map read) fails without `CAP_BPF`: tried with the
/// effective set lowered to `keep`, then restored to the permitted set.
pub fn needs_bpf_for_maps(keep: &CapsHashSet, probe: impl Fn() -> bool) -> Result<bool> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    set_effective(keep)?;
    let ok = probe();
    set_effective(&permitted)?;
    Ok(!ok)
}

/// One line for `-v`: what was kept and why.
pub fn describe(kept: &Kept) -> String {
    if kept.is_empty() {
        return "capabilities: all dropped after start-up (nothing later needs one)".to_owned();
    }
    let parts: Vec<String> = kept.iter().map(|(c, why)| format!("{c} ({why})")).collect();
    format!(
        "capabilities: kept only {} after start-up: {}",
        kept.len(),
        parts.join("; ")
    )
}

/// The bits of a set, as `/proc/PID/status` shows them (`CapEff`), for tests.
pub fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_keeps_three_and_says_why() {
        let k = needed_after_start(true);
        let set: CapsHashSet = k.iter().map(|(c, _)| *c).collect();
        assert_eq!(mask(&set), (1 << 21) | (1 << 19) | (1 << 2));
        assert!(describe(&k).contains("CAP_SYS_ADMIN (setns()"));
        assert!(needed_after_start(false).is_empty());
        assert!(describe(&[].to_vec()).contains("all dropped"));
    }
}
