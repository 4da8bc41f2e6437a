//! The report's HTML page in a real browser: headless Chromium renders the fixture
//! incident's page to a screenshot and dumps its DOM; the page must draw its charts
//! and log no script or console error. (Root only because the harness is: it
//! installs Debian's chromium when missing.)

use std::{
    fs,
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::support::TempDir;
use portx::views::report::{fixture, html};

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd`, killing it after `limit`; output read on threads so a full pipe
/// cannot stall the child.
fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().context("stdout")?));
    let err = drain(Box::new(child.stderr.take().context("stderr")?));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} still running after {limit:?}: killed");
        }
        thread::sleep(Duration::from_millis(50));
    };
    Ok(Output {
        ok: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn have_chromium() -> bool {
    Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Debian's chromium, installed when missing (the package lists are refreshed only
/// when the first attempt fails: they are usually fresh enough).
fn ensure_chromium() -> Result<()> {
    if have_chromium() {
        return Ok(());
    }
    let apt = |args: &[&str]| -> Result<Output> {
        let mut c = Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run_bounded(c, Duration::from_secs(900))
    };
    if !apt(&["install", "-y", "chromium"])?.ok {
        let update = apt(&["update"])?;
        ensure!(update.ok, "apt-get update failed: {}", update.stderr.trim());
        let install = apt(&["install", "-y", "chromium"])?;
        ensure!(
            install.ok,
            "apt-get install chromium failed: {}",
            install.stderr.trim()
        );
    }
    ensure!(have_chromium(), "chromium installed but does not run");
    Ok(())
}

fn chromium(profile: &Path, extra: &[String], url: &str) -> Result<Output> {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url);
    let out = run_bounded(c, super::support::wait() * 3)?;
    // Console messages (script errors, failed loads the page would make) are logged
    // with CONSOLE; an uncaught exception also says so.
    let bad: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    ensure!(bad.is_empty(), "the page logged:\n{}", bad.join("\n"));
    Ok(out)
}

pub fn renders_in_chromium() -> Result<()> {
    let dir = TempDir::new("report-page")?;
    let page = dir.0.join("page.html");
    let report = fixture::mysql_report();
    fs::write(&page, html::render(&report)).context("writing the page")?;
    page_renders(&page, report.destinations.len(), &["mysqld"])
}

/// Opens `page` in headless Chromium: a screenshot of plausible size, `charts` charts
/// drawn in the DOM (used ports, TIME_WAIT, capacity, failures), each of `texts` in
/// it, and no console or script error.
pub fn page_renders(page: &Path, charts: usize, texts: &[&str]) -> Result<()> {
    if std::env::var_os("PORTX_IN_VM").is_some() {
        eprintln!("skipping the browser check - no Chromium inside the VM (the host run has it)");
        return Ok(());
    }
    ensure_chromium()?;
    let dir = TempDir::new("report-shot")?;
    let url = format!("file://{}", page.display());

    let shot = dir.0.join("page.png");
    let profile = TempDir::new("chromium-profile")?;
    let out = chromium(
        &profile.0,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,1600".into(),
        ],
        &url,
    )?;
    ensure!(out.ok, "chromium --screenshot failed:\n{}", out.stderr);
    let png = fs::read(&shot).with_context(|| format!("no screenshot at {}", shot.display()))?;
    ensure!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    // A blank 1200x1600 page compresses to a few KB; text and charts make it larger.
    ensure!(
        (20_000..20_000_000).contains(&png.len()),
        "implausible screenshot size {} bytes",
        png.len()
    );
    if let Ok(keep) = std::env::var("PORTX_KEEP_SCREENSHOT") {
        fs::copy(&shot, &keep).with_context(|| format!("copying the screenshot to {keep}"))?;
    }

    let profile = TempDir::new("chromium-profile")?;
    let out = chromium(&profile.0, &["--dump-dom".into()], &url)?;
    ensure!(out.ok, "chromium --dump-dom failed:\n{}", out.stderr);
    let dom = out.stdout;
    ensure!(
        dom.matches("<svg").count() == charts,
        "expected {charts} charts in the DOM:\n{dom}"
    );
    for want in [
        "<polyline class=\"used\"",
        "<polyline class=\"tw\"",
        "class=\"cap\"",
        "class=\"fail\"",
    ]
    .iter()
    .chain(texts)
    {
        ensure!(dom.contains(want), "no {want} in the DOM");
    }
    Ok(())
}
