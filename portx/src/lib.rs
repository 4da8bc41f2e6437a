//! portx: who is eating ephemeral ports, and why bind()/connect() fail.
//!
//! The folders follow the data:
//! - [`kernel`]: everything that touches the running kernel (loading the BPF programs,
//!   tracefs, BTF, sock_diag, `/proc`, namespaces, privileges);
//! - [`events`]: ring-buffer records decoded into typed events, filtered, joined
//!   with their sockets' owners;
//! - [`model`]: the port accounting model, pure and fed by events;
//! - [`views`]: what people read (trace lines, JSON, the TUI);
//! - [`capture`]: the recording format, a sink and a source of model inputs;
//! - [`commands`]: one thin file per subcommand wiring the above.
//!
//! Only [`kernel`] needs root; the rest is tested without it.

pub mod capture;
pub mod cli;
pub mod commands;
pub mod events;
pub mod kernel;
pub mod model;
pub mod views;
pub mod workload;
