//! `portx check --watch`: the live traffic's diagnoses join the settings' findings.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::support::{Netns, Peer, wait};

/// `portx -v check --json --netns NS --watch SECS`, once attached (events are buffered
/// from then); its stderr is kept in the background, for a failure to show.
fn start_watch(ns: &Netns, secs: &str) -> Result<(Child, Stderr)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portx"))
        .args([
            "-v", "check", "--json", "--netns", &ns.name, "--watch", secs,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting portx check")?;
    let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
    let deadline = std::time::Instant::now() + wait();
    loop {
        let mut line = String::new();
        ensure!(
            stderr.read_line(&mut line)? > 0 && std::time::Instant::now() < deadline,
            "portx check exited or hung before attaching"
        );
        ensure!(!line.starts_with("portx: error"), "{line}");
        if line.starts_with("portx: TIME_WAIT:") {
            break;
        }
    }
    let kept = Stderr::default();
    let lines = kept.0.clone();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            lines.lock().expect("not poisoned").push(line);
        }
    });
    Ok((child, kept))
}

/// What `portx check` said on stderr (`-v`: attach paths, drift checks).
#[derive(Clone, Default)]
struct Stderr(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl std::fmt::Display for Stderr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.lock().expect("not poisoned").join("\n"))
    }
}

/// A client opening and closing connections as fast as it can in a namespace of 1000
/// ports with tcp_tw_reuse 0 fills the range with its TIME_WAIT: `check --watch`
/// names it `short-lived-connections` (and TIME_WAIT as the limit), critical.
pub fn diagnoses_join_the_findings() -> Result<()> {
    let ns = Netns::new(Some((20000, 20999)))?;
    ns.sysctl("net/ipv4/tcp_tw_reuse", "0")?;
    let (child, _) = start_watch(&ns, "10")?;
    let mut client = Peer::spawn(&ns, "burst", &["127.0.0.1:9600", "900"])?;
    client.go()?;
    let done = client.expect("done")?;
    ensure!(done == "900", "the client made {done} connections");
    let out = child.wait_with_output()?;
    let code = out.status.code().context("portx check killed")?;
    let v: Value = serde_json::from_slice(&out.stdout).context("check --watch printed no JSON")?;
    ensure!(v["netns"] == ns.inode, "{v}");
    let findings = v["findings"].as_array().cloned().unwrap_or_default();
    let of = |id: &str| findings.iter().find(|f| f["id"] == id);
    let short = of("short-lived-connections")
        .with_context(|| format!("no short-lived-connections in {v}"))?;
    let who = format!("{}({})", client.comm, client.pid);
    ensure!(
        short["title"]
            .as_str()
            .is_some_and(|t| t.starts_with(&format!("{who} opens ")))
            && short["title"]
                .as_str()
                .is_some_and(|t| t.contains("to 127.0.0.1:9600")),
        "{short}"
    );
    ensure!(
        short["fix"][0]
            .as_str()
            .is_some_and(|f| f.starts_with("reuse connections")),
        "{short}"
    );
    let tw = of("timewait-dominated").with_context(|| format!("no timewait-dominated in {v}"))?;
    ensure!(
        tw["fix"][0]
            .as_str()
            .is_some_and(|f| f.contains("tcp_tw_reuse=1")),
        "{tw}"
    );
    ensure!(code == 2, "exit {code}, want 2 (critical): {v}");
    Ok(())
}

/// Clients that closed 8 connections toward a server that never closes, in a
/// namespace of 10 ports with tcp_tw_reuse 1: `check --watch` (its drift checks) names
/// `server-not-closing`, a warning, and does not advise tcp_tw_reuse.
pub fn names_a_server_that_never_closes() -> Result<()> {
    let ns = Netns::new(Some((20000, 20009)))?;
    ns.sysctl("net/ipv4/tcp_tw_reuse", "1")?;
    let (child, stderr) = start_watch(&ns, "3")?;
    let mut server = Peer::spawn(&ns, "sink", &["127.0.0.1:9601"])?;
    server.go()?;
    server.expect("listening")?;
    let mut clients = Peer::spawn(&ns, "hold", &["127.0.0.1:9601", "8", "8"])?;
    clients.go()?;
    ensure!(clients.line()?.starts_with("done"), "hold did not finish");
    let out = child.wait_with_output()?;
    clients.finish()?;
    server.finish()?;
    let code = out.status.code().context("portx check killed")?;
    let v: Value = serde_json::from_slice(&out.stdout).context("check --watch printed no JSON")?;
    let findings = v["findings"].as_array().cloned().unwrap_or_default();
    let of = |id: &str| findings.iter().find(|f| f["id"] == id);
    let f = of("server-not-closing")
        .with_context(|| format!("no server-not-closing in {v}\nstderr:\n{stderr}"))?;
    ensure!(
        f["severity"] == "warn"
            && f["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("8 of the 8 ports used toward 127.0.0.1:9601")),
        "{f}\nstderr:\n{stderr}"
    );
    ensure!(of("timewait-dominated").is_none(), "{v}\nstderr:\n{stderr}");
    ensure!(
        code == 1,
        "exit {code}, want 1 (a warning): {v}\nstderr:\n{stderr}"
    );
    Ok(())
}
