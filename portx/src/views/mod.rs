//! What people read: trace lines and NDJSON ([`output`]), the live TUI ([`tui`]).

pub mod output;
pub mod report;
pub mod tui;
