//! `portx check --watch SECS`: the audit of the settings, plus what the live traffic
//! of the namespace says. The programs are attached for SECS seconds, the port model
//! follows every connection (as `portx top` does), and its diagnoses join the
//! findings, each with its fix and severity (so the exit status too).

use std::time::Duration;

use anyhow::Result;

use super::{Finding, Severity};
use crate::{
    events::filter::Filter,
    model::{Model, View, diagnosis::Diagnosis},
};

/// The stable id of a diagnosis, as a finding's (`&'static`) id.
fn finding_id(id: &str) -> &'static str {
    match id {
        "short-lived-connections" => "short-lived-connections",
        "timewait-dominated" => "timewait-dominated",
        "server-not-closing" => "server-not-closing",
        "concurrency-at-capacity" => "concurrency-at-capacity",
        "range-too-small" => "range-too-small",
        "leak" => "leak",
        _ => "diagnosis",
    }
}

/// A diagnosis as a finding: what was measured is the title, the advice the fix.
pub fn finding(d: &Diagnosis) -> Finding {
    Finding {
        id: finding_id(&d.id),
        severity: if d.severity == "critical" {
            Severity::Critical
        } else {
            Severity::Warn
        },
        title: d.explanation.clone(),
        detail: format!(
            "Measured over the watch from live traffic toward {}:{} (netns {}).",
            d.daddr, d.dport, d.netns
        ),
        fix: vec![d.advice.clone()],
    }
}

/// Watches namespace `netns` for `secs` seconds and returns its diagnoses.
pub fn diagnoses(netns: u32, secs: f64, verbose: bool) -> Result<Vec<Diagnosis>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let filter = Filter {
            netns: Some(netns),
            ..Filter::default()
        };
        // Drift checks, as `top` runs them: a few within the watch. Without them the
        // model cannot tell a timewait socket still in FIN_WAIT2 from TIME_WAIT, and
        // would advise tcp_tw_reuse where the server does not close.
        let drift_secs = (secs / 3.0).clamp(0.2, 10.0);
        let (probes, mut live) =
            crate::commands::top::start_live(16, filter.kernel(), Some(drift_secs), verbose)?;
        let mut model = Model::new();
        model.set_exact_timewait(probes.exact_timewait);
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
        let mut inputs = Vec::new();
        loop {
            tokio::select! {
                r = live.next(&mut inputs) => { r?; }
                _ = tokio::time::sleep_until(deadline) => break,
            }
            for i in inputs.drain(..) {
                model.feed(&i);
            }
        }
        // What the kernel said before the deadline counts, a drift check's result
        // after the events it waits for (closes just before the deadline included).
        live.drain(&mut inputs);
        for i in inputs.drain(..) {
            model.feed(&i);
        }
        model.tick(crate::kernel::live::boottime_ns());
        let view = View {
            netns: Some(netns),
            ..View::default()
        };
        Ok(model.snapshot(view).diagnoses)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diagnosis_becomes_a_finding_with_its_fix() {
        let d = Diagnosis {
            id: "timewait-dominated".into(),
            severity: "critical".into(),
            netns: 7,
            who: None,
            saddr: "10.0.0.1".into(),
            daddr: "10.0.0.5".into(),
            dport: 443,
            numbers: Default::default(),
            explanation: "TIME_WAIT holds 900 of the 1000 ports".into(),
            advice: "sysctl -w net.ipv4.tcp_tw_reuse=1 ...".into(),
        };
        let f = finding(&d);
        assert_eq!(
            (f.id, f.severity),
            ("timewait-dominated", Severity::Critical)
        );
        assert_eq!(f.fix, ["sysctl -w net.ipv4.tcp_tw_reuse=1 ..."]);
        assert_eq!(
            finding(&Diagnosis {
                id: "new".into(),
                severity: "warning".into(),
                ..d
            })
            .id,
            "diagnosis"
        );
    }
}
