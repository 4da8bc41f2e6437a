//! Kernel-facing inputs: loading and attaching the BPF programs, tracefs format files,
//! BTF, sock_diag dumps, `/proc` owners, network namespaces, privileges.

pub mod after_events;
pub mod batches;
pub mod btf;
pub mod cgroups;
pub mod live;
pub mod loader;
pub mod netns;
pub mod preflight;
pub mod privs;
pub mod proc_owners;
pub mod ring_positions;
pub mod sockdiag;
pub mod tracefs;
