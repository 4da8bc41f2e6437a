//! The port accounting model: pure Rust, fed by typed events and a start-up baseline,
//! no kernel access.

pub mod snapshot;
