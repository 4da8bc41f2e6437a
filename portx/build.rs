//! Builds the BPF programs in `portx-ebpf` for the BPF target and leaves the object in
//! `OUT_DIR`, where `src/loader.rs` embeds it (aya-template's layout).
//!
//! This needs the nightly toolchain with rust-src and `bpf-linker` on PATH; `cargo xtask
//! setup` provides both, and every `cargo xtask` command puts bpf-linker on PATH.
use anyhow::{Context as _, anyhow, bail};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var_os("AYA_BUILD_SKIP").is_none() && !on_path("bpf-linker") {
        bail!(
            "bpf-linker is not on PATH: build portx through `cargo xtask build` (or run \
             `cargo xtask setup` and add the directory it prints to PATH)"
        );
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "portx-ebpf")
        .ok_or_else(|| anyhow!("portx-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
}
