//! What people read: trace lines and NDJSON ([`output`]), the live TUI ([`tui`]),
//! reports ([`report`]), and `portx serve`'s Prometheus metrics ([`metrics`]) and
//! HTTP endpoint ([`http`]).

pub mod http;
pub mod metrics;
pub mod output;
pub mod report;
pub mod time;
pub mod tui;
