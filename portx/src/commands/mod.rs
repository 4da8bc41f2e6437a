//! One file per subcommand, wiring kernel inputs, events, the model and views.

pub mod check;
pub mod record;
pub mod report;
pub mod serve;
pub mod top;
pub mod trace;

/// Resolves after `duration` (`--duration`), or never.
pub async fn stop_after(duration: Option<std::time::Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
