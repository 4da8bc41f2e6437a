//! One file per subcommand, wiring kernel inputs, events, the model and views.

pub mod check;
pub mod record;
pub mod report;
pub mod serve;
pub mod top;
pub mod trace;
