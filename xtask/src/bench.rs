//! `cargo xtask bench`: runs portx's benchmark binary and prints one table (figure,
//! value, baseline, ratio, target, pass/fail); `--record` appends it to BENCHMARKS.md
//! with the machine it ran on.

use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

fn num(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(x) if x.abs() >= 1e6 => format!("{:.2}M", x / 1e6),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.3}"),
    }
}

/// Renders the benchmark's JSON lines as a Markdown table.
pub fn table(lines: &str) -> String {
    let mut out = String::from(
        "| figure | value | baseline | ratio | target | pass | spread |\n|---|---|---|---|---|---|---|\n",
    );
    for v in lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let unit = v["unit"].as_str().unwrap_or("");
        let pass = match v["pass"].as_bool() {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "-",
        };
        let baseline = match v["baseline"].as_f64() {
            Some(_) => format!(
                "{} {unit} ({})",
                num(&v["baseline"]),
                v["baseline_name"].as_str().unwrap_or("")
            ),
            None => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} {unit} | {baseline} | {} | {} | {pass} | {:.0}% |",
            v["figure"].as_str().unwrap_or("?"),
            num(&v["value"]),
            num(&v["ratio"]),
            v["target"].as_str().unwrap_or(""),
            v["spread_pct"].as_f64().unwrap_or(0.0),
        );
    }
    out
}

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("kernel {}, {cores} cores", kernel.trim())
}

pub fn run(cargo: &mut Command, quick: bool, record: bool, only: &[String]) -> Result<()> {
    const PARTS: [&str; 8] = [
        "ingest", "memory", "baseline", "storm", "latency", "capture", "serve", "names",
    ];
    if let Some(p) = only.iter().find(|p| !PARTS.contains(&p.as_str())) {
        bail!("unknown bench part `{p}`; parts: {}", PARTS.join(", "));
    }
    cargo.args([
        "bench",
        "--package",
        "portx",
        "--bench",
        "portx_bench",
        "--",
    ]);
    if quick {
        cargo.arg("--quick");
    }
    if !only.is_empty() {
        cargo.args(["--only", &only.join(",")]);
    }
    let out = cargo.output().context("running the benchmark")?;
    if !out.status.success() {
        bail!(
            "benchmark failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let table = table(&stdout);
    // Lines the bench prints for people (skips, what it built).
    for l in String::from_utf8_lossy(&out.stderr).lines() {
        if l.starts_with("skipping")
            || l.starts_with("baseline dump:")
            || l.starts_with("serve churn:")
        {
            eprintln!("{l}");
        }
    }
    println!("{}\n{table}", machine());
    if record {
        let mut md = std::fs::read_to_string("BENCHMARKS.md").unwrap_or_else(|_| {
            "# portx benchmarks\n\nAppended by `cargo xtask bench --record`.\n".into()
        });
        let _ = write!(
            md,
            "\n## {} ({}{})\n\n{table}",
            machine(),
            String::from_utf8_lossy(
                &Command::new("date")
                    .arg("-u")
                    .arg("+%Y-%m-%d %H:%M UTC")
                    .output()?
                    .stdout
            )
            .trim(),
            if quick { ", --quick" } else { "" }
        );
        std::fs::write("BENCHMARKS.md", md).context("writing BENCHMARKS.md")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_rows_with_pass_and_fail() {
        let t = super::table(
            r#"{"figure":"a","value":12000000.0,"unit":"events/s","baseline":100.0,"baseline_name":"b","ratio":120000.0,"target":">= 5000000","pass":true,"spread_pct":3.2}
{"figure":"c","value":9.5,"unit":"ms","baseline":null,"baseline_name":"","ratio":null,"target":"x","pass":false,"spread_pct":0}
not json"#,
        );
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 4, "{t}");
        assert!(
            rows[2].starts_with("| a | 12.00M events/s | 100 events/s (b) |"),
            "{}",
            rows[2]
        );
        assert!(rows[2].contains("| pass | 3% |"), "{}", rows[2]);
        assert!(
            rows[3].contains("| - |") && rows[3].contains("FAIL"),
            "{}",
            rows[3]
        );
    }
}
