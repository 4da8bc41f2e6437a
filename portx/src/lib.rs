//! portx: who is eating ephemeral ports, and why bind()/connect() fail.
//!
//! Kernel-facing code ([`loader`], [`tracefs`], [`kernel_btf`], [`preflight`]) is kept
//! apart from the pure parts ([`event`], [`filter`], [`output`], [`netns`]), so that
//! each can be tested alone.

pub mod check;
pub mod cli;
pub mod event;
pub mod filter;
pub mod kernel_btf;
pub mod loader;
pub mod model;
pub mod netns;
pub mod output;
pub mod preflight;
pub mod proc_owners;
pub mod sock_owners;
pub mod sockdiag;
pub mod top;
pub mod trace;
pub mod tracefs;
pub mod tui;
