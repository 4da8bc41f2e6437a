//! Checks made before touching BPF, each failing with one actionable line.

use std::path::Path;

use crate::kernel::btf::VMLINUX_BTF;

// Capability numbers, include/uapi/linux/capability.h.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error(
        "portx needs root, or CAP_BPF and CAP_PERFMON, to load BPF programs (run it with sudo)"
    )]
    Privileges,
    #[error(
        "kernel BTF is missing ({VMLINUX_BTF}): portx needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error("no process with pid {0}")]
    NoProcess(u32),
}

/// Whether an effective capability set (`CapEff` in /proc/self/status, hex) lets us
/// load and attach tracing programs.
pub fn caps_allow_bpf(cap_eff_hex: &str) -> bool {
    let Ok(bits) = u64::from_str_radix(cap_eff_hex.trim(), 16) else {
        return false;
    };
    let has = |cap: u32| bits & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

fn effective_caps() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|s| s.trim().to_owned())
}

pub fn check_privileges() -> Result<(), PreflightError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    match effective_caps() {
        Some(caps) if caps_allow_bpf(&caps) => Ok(()),
        _ => Err(PreflightError::Privileges),
    }
}

pub fn check_btf() -> Result<(), PreflightError> {
    if Path::new(VMLINUX_BTF).exists() {
        Ok(())
    } else {
        Err(PreflightError::NoBtf)
    }
}

/// `--pid` of a process that does not exist: without this the filter would show
/// nothing, silently. Needs no privileges, so it runs before the other checks.
pub fn check_pid(pid: Option<u32>) -> Result<(), PreflightError> {
    match pid {
        // 0 selects events no process is known for; /proc has no entry for it.
        Some(p) if p != 0 && !Path::new(&format!("/proc/{p}")).exists() => {
            Err(PreflightError::NoProcess(p))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        assert!(caps_allow_bpf("000001ffffffffff")); // root
        assert!(caps_allow_bpf("0000000000200000")); // CAP_SYS_ADMIN only
        assert!(caps_allow_bpf("000000c000000000")); // CAP_BPF + CAP_PERFMON
        assert!(!caps_allow_bpf("0000008000000000")); // CAP_BPF alone
        assert!(!caps_allow_bpf("0000000000000000"));
        assert!(!caps_allow_bpf("garbage"));
    }

    #[test]
    fn pid_must_name_a_process() {
        assert_eq!(check_pid(None), Ok(()));
        assert_eq!(check_pid(Some(0)), Ok(()));
        assert_eq!(check_pid(Some(std::process::id())), Ok(()));
        // Above the largest pid_max (2^22).
        assert_eq!(
            check_pid(Some(u32::MAX)),
            Err(PreflightError::NoProcess(u32::MAX))
        );
        assert_eq!(
            PreflightError::NoProcess(999_999).to_string(),
            "no process with pid 999999"
        );
    }

    #[test]
    fn privilege_error_says_what_to_do() {
        assert!(PreflightError::Privileges.to_string().contains("sudo"));
        assert!(
            PreflightError::NoBtf
                .to_string()
                .contains("CONFIG_DEBUG_INFO_BTF")
        );
    }
}
