//! `portx record`, the flight recorder, `portx report` and `portx top --replay` on
//! real incidents made in the tests' own namespaces.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::{
    report_page::page_renders,
    support::{Netns, Peer, TempDir, wait},
    top::{TopOnce, dest, netns_entry},
};

/// A running `portx record`.
struct Recorder {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Recorder {
    /// Starts it and waits until its programs are attached and its baseline taken.
    fn start(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portx"))
            .arg("record")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting portx record")?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let r = Self { child, stderr: rx };
        // Attached, and what was held before is in: the tests' sockets come after.
        r.expect(|l| l.starts_with("portx: baseline taken"))?;
        Ok(r)
    }

    /// Waits for a stderr line that `want` accepts, and returns it.
    fn expect(&self, want: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + wait();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stderr
                .recv_timeout(left)
                .context("portx record did not say what was expected")?;
            if want(&line) {
                return Ok(line);
            }
            ensure!(!line.starts_with("portx: error"), "{line}");
        }
    }

    /// Waits for it to exit by itself; returns its remaining stderr.
    fn wait_exit(mut self) -> Result<Vec<String>> {
        let deadline = Instant::now() + wait();
        let st = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            ensure!(Instant::now() < deadline, "portx record did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let rest: Vec<String> =
            std::iter::from_fn(|| self.stderr.recv_timeout(Duration::from_secs(1)).ok()).collect();
        ensure!(
            st.success(),
            "portx record exited with {st}: {}",
            rest.join("\n")
        );
        Ok(rest)
    }

    /// Ctrl-C, as a user stops it.
    fn stop(self) -> Result<Vec<String>> {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.wait_exit()
    }

    /// kill -9: nothing gets to run at exit.
    fn kill9(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `portx ARGS`, which must succeed; its stdout.
fn portx(args: &[&str]) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_portx"))
        .args(args)
        .output()
        .context("running portx")?;
    ensure!(
        out.status.success(),
        "portx {args:?} exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs `portx ARGS`, which must fail; its stderr.
fn portx_fails(args: &[&str]) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_portx"))
        .args(args)
        .output()
        .context("running portx")?;
    ensure!(!out.status.success(), "portx {args:?} succeeded");
    Ok(String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

fn report_json(files: &[&Path]) -> Result<Value> {
    let mut args = vec!["report", "--json"];
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    serde_json::from_str(&portx(&args)?).context("portx report --json printed invalid JSON")
}

fn failure<'a>(report: &'a Value, event: &str) -> Result<&'a Value> {
    report["failures"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["event"] == event))
        .with_context(|| {
            format!(
                "no {event} in the report's failures: {}",
                report["failures"]
            )
        })
}

fn destination(report: &Value, netns: u32, dport: u16) -> Result<&Value> {
    report["destinations"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|d| d["netns"] == netns && d["dport"] == dport && d["daddr"] == "127.0.0.1")
        })
        .with_context(|| format!("no destination :{dport} in {}", report["destinations"]))
}

/// The MySQL-on-3306 incident: a client takes every port of 3306-3309 toward :9000,
/// its next connect() fails, then a server's bind() of 3306 fails. Returns (holder,
/// server) after both failures happened.
fn mysql_incident(ns: &Netns) -> Result<(Peer, Peer)> {
    let mut holder = Peer::spawn(ns, "exhaust", &["127.0.0.1:9000", "64"])?;
    let mut server = Peer::spawn(ns, "bind", &["0.0.0.0:3306"])?;
    holder.go()?;
    let mut ports = 0;
    loop {
        let l = holder.line()?;
        if l.starts_with("port ") {
            ports += 1;
        } else if l == format!("error {}", libc::EADDRNOTAVAIL) {
            continue;
        } else if l == "done" {
            break;
        }
    }
    ensure!(ports == 4, "an even range of 4 gives 4 ports, got {ports}");
    server.go()?;
    ensure!(
        server.line()? == format!("error {}", libc::EADDRINUSE),
        "bind did not fail with EADDRINUSE"
    );
    Ok((holder, server))
}

/// What every report of the incident must say.
fn check_incident(report: &Value, ns: &Netns, holder: &Peer, server: &Peer) -> Result<()> {
    let c = failure(report, "connect_error")?;
    ensure!(
        c["error"] == "EADDRNOTAVAIL" && c["pid"] == holder.pid,
        "{c}"
    );
    ensure!(
        c["errno"] == libc::EADDRNOTAVAIL && c["dport"] == 9000,
        "{c}"
    );
    let b = failure(report, "bind_error")?;
    ensure!(b["error"] == "EADDRINUSE" && b["pid"] == server.pid, "{b}");
    ensure!(b["sport"] == 3306, "{b}");
    ensure!(
        b["holder"]["pid"] == holder.pid,
        "the bind failure names its holder: {b}"
    );
    let d = destination(report, ns.inode, 9000)?;
    ensure!(d["capacity"] == 4 && d["peak_used"] == 4, "{d}");
    let h = d["holders_at_peak"]
        .as_array()
        .and_then(|a| a.first())
        .with_context(|| format!("no holder at the peak: {d}"))?;
    ensure!(h["pid"] == holder.pid && h["ports"] == 4, "{d}");
    Ok(())
}

/// kill -9 mid-run: every frame flushed before is recovered, and the report shows the
/// failures with the right processes, the destination full and its holder.
pub fn record_survives_kill9() -> Result<()> {
    let ns = Netns::new(Some((3306, 3309)))?;
    let dir = TempDir::new("kill9")?;
    let file = dir.0.join("incident.portx");
    let f = file.display().to_string();
    let rec = Recorder::start(&["-o", &f, "--netns", &ns.name])?;
    let (mut holder, mut server) = mysql_incident(&ns)?;
    // Frames are flushed every second: wait for two flushes, then kill.
    std::thread::sleep(Duration::from_millis(2500));
    rec.kill9()?;
    let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "the recording is {mode:o}, not 600");
    let report = report_json(&[&file])?;
    server.finish()?;
    holder.finish()?;
    check_incident(&report, &ns, &holder, &server)?;
    ensure!(
        report["span"]["events"].as_u64().unwrap_or(0) > 10,
        "{}",
        report["span"]
    );

    // The events read back as `portx trace --json` lines.
    let events = portx(&["report", "--events", &f])?;
    let connects = events
        .lines()
        .map(serde_json::from_str::<Value>)
        .collect::<Result<Vec<_>, _>>()
        .context("report --events printed a line that is not JSON")?
        .into_iter()
        .filter(|e| e["event"] == "connect" && e["pid"] == holder.pid && e["netns"] == ns.inode)
        .count();
    ensure!(
        connects == 4,
        "{connects} connect events of the holder, not 4"
    );

    // The page for the ticket, from the real recording, in a real browser.
    let page = dir.0.join("incident.html");
    portx(&["report", &f, "--html", &page.display().to_string()])?;
    let mode = std::fs::metadata(&page)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "the page is {mode:o}, not 600");
    page_renders(&page, 1, &["EADDRNOTAVAIL", "EADDRINUSE", "127.0.0.1:9000"])?;

    // The same file cut in the middle of its last frame still reports, and says so.
    let bytes = std::fs::read(&file)?;
    let cut = dir.0.join("cut.portx");
    std::fs::write(&cut, &bytes[..bytes.len() - 3])?;
    let torn = report_json(&[&cut])?;
    ensure!(
        torn["complete"]["torn_tail"] != false,
        "{}",
        torn["complete"]
    );
    // A file that is not a recording, or none: one line naming it and why.
    let foreign = dir.0.join("foreign.portx");
    std::fs::write(&foreign, b"hello, not a capture file\n")?;
    let foreign = foreign.display().to_string();
    let err = portx_fails(&["report", &foreign])?;
    ensure!(
        err.lines().count() == 1 && err.contains(&format!("{foreign}: not a portx capture")),
        "{err}"
    );
    let missing = dir.0.join("missing.portx").display().to_string();
    let err = portx_fails(&["report", &missing])?;
    ensure!(
        err.lines().count() == 1 && err.contains(&format!("{missing}: No such file")),
        "{err}"
    );
    // Never over an existing file without --force.
    let err = portx_fails(&["record", "-o", &f, "--duration", "1"])?;
    ensure!(err.contains("exists") && err.contains("--force"), "{err}");
    Ok(())
}

/// Replay and live cannot disagree: `top --replay` of a recording shows what `top`
/// showed live at the end of it.
pub fn replay_matches_live_top() -> Result<()> {
    let ns = Netns::new(Some((3306, 3309)))?;
    let dir = TempDir::new("replay")?;
    let file = dir.0.join("live.portx");
    let f = file.display().to_string();
    let rec = Recorder::start(&["-o", &f, "--netns", &ns.name])?;
    let top = TopOnce::start(&["--netns", &ns.name, "--interval", "4"])?;
    let (mut holder, mut server) = mysql_incident(&ns)?;
    let live = top.snapshot()?;
    rec.stop()?;
    let inode = ns.inode.to_string();
    let replayed: Value = serde_json::from_str(&portx(&[
        "top", "--replay", &f, "--speed", "0", "--once", "--json", "--netns", &inode,
    ])?)?;
    server.finish()?;
    holder.finish()?;
    let (l, r) = (netns_entry(&live, &ns)?, netns_entry(&replayed, &ns)?);
    let (dl, dr) = (dest(l, 9000)?, dest(r, 9000)?);
    // Owners without `client`: rates and lifetimes are measured at each one's own
    // moment (the live snapshot's, the recording's end), so they may differ.
    let bare = |d: &Value| -> Value {
        let mut d = d.clone();
        for o in d["owners"].as_array_mut().into_iter().flatten() {
            o.as_object_mut().map(|o| o.remove("client"));
        }
        d
    };
    let (dl, dr) = (bare(dl), bare(dr));
    for key in ["used", "capacity", "states", "owners"] {
        ensure!(
            dl[key] == dr[key],
            "{key}: live {}, replayed {}",
            dl[key],
            dr[key]
        );
    }
    ensure!(
        l["capacity"] == r["capacity"] && l["port_range"] == r["port_range"],
        "{l}\n{r}"
    );
    let failures = |s: &Value| -> Vec<(Value, Value, Value)> {
        s["failures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["netns"] == ns.inode)
            .map(|f| {
                (
                    f["event"].clone(),
                    f["pid"].clone(),
                    f["holder"]["pid"].clone(),
                )
            })
            .collect()
    };
    ensure!(
        failures(&live) == failures(&replayed) && failures(&live).len() == 2,
        "failures: live {:?}, replayed {:?}",
        failures(&live),
        failures(&replayed)
    );
    Ok(())
}

/// A flight recorder armed on EADDRNOTAVAIL writes a file holding the connects from
/// before the failure, and the trigger.
pub fn flight_recorder_keeps_the_window() -> Result<()> {
    let ns = Netns::new(Some((3306, 3309)))?;
    let dir = TempDir::new("flight")?;
    let d = dir.0.display().to_string();
    let rec = Recorder::start(&[
        "--flight-recorder",
        &d,
        "--trigger",
        "failure:EADDRNOTAVAIL",
        "--window",
        "60",
        "--post",
        "1",
        "--max-dumps",
        "1",
        "--netns",
        &ns.name,
    ])?;
    // Nothing is written while nothing fires.
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(
        std::fs::read_dir(&dir.0)?.count() == 0,
        "the flight recorder wrote before a trigger"
    );
    let (mut holder, mut server) = mysql_incident(&ns)?;
    rec.expect(|l| l.contains("trigger failure:EADDRNOTAVAIL fired"))?;
    let rest = rec.wait_exit()?;
    let files: Vec<PathBuf> = std::fs::read_dir(&dir.0)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    ensure!(files.len() == 1, "{} files written: {rest:?}", files.len());
    ensure!(
        rest.iter()
            .any(|l| l.contains(&files[0].display().to_string())),
        "the recorder did not name its file: {rest:?}"
    );
    let report = report_json(&[&files[0]])?;
    server.finish()?;
    holder.finish()?;
    ensure!(
        report["trigger"]["spec"] == "failure:EADDRNOTAVAIL",
        "{}",
        report["trigger"]
    );
    // The bind failure came within the tail, after the trigger.
    check_incident(&report, &ns, &holder, &server)?;
    let events = portx(&["report", "--events", &files[0].display().to_string()])?;
    let connects = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "connect" && e["pid"] == holder.pid)
        .count();
    ensure!(
        connects == 4,
        "{connects} connects from before the failure, not 4"
    );
    Ok(())
}

/// A set rotated every second reads as one timeline: each file stands alone, and the
/// whole set reports the incident with no gaps.
pub fn rotated_set_is_one_timeline() -> Result<()> {
    let ns = Netns::new(Some((3306, 3309)))?;
    let dir = TempDir::new("rotate")?;
    let base = dir.0.join("set.portx");
    let rec = Recorder::start(&[
        "-o",
        &base.display().to_string(),
        "--rotate-time",
        "1",
        "--netns",
        &ns.name,
    ])?;
    let (mut holder, mut server) = mysql_incident(&ns)?;
    // The ports stay held across two or more rotations.
    std::thread::sleep(Duration::from_millis(2500));
    rec.stop()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir.0)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    ensure!(
        files.len() >= 2,
        "{} files after 2.5 s rotated every second",
        files.len()
    );
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        ensure!(
            name.starts_with("set-") && name.ends_with("Z.portx"),
            "{name}"
        );
    }
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let report = report_json(&refs)?;
    server.finish()?;
    holder.finish()?;
    check_incident(&report, &ns, &holder, &server)?;
    let complete = &report["complete"];
    ensure!(
        complete["gaps"].as_array().is_some_and(Vec::is_empty) && complete["dropped"] == 0,
        "{complete}"
    );
    ensure!(
        report["files"].as_array().map(Vec::len) == Some(files.len()),
        "{}",
        report["files"]
    );
    // The last file alone knows the ports were already held when it began.
    let last = report_json(&[refs[refs.len() - 1]])?;
    let d = destination(&last, ns.inode, 9000)?;
    ensure!(d["peak_used"] == 4, "the last file alone: {d}");
    Ok(())
}

/// A full disk stops the recording with one line, and what was written before stays
/// readable; bad flags and files are one-line errors.
pub fn record_full_disk_and_bad_input() -> Result<()> {
    let dir = TempDir::new("full")?;
    let mnt = dir.0.join("small");
    std::fs::create_dir_all(&mnt)?;
    let m = mnt.display().to_string();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs", &m])
        .status()?;
    ensure!(st.success(), "mounting a 64 KiB tmpfs");
    let result = (|| -> Result<()> {
        let ns = Netns::new(Some((10000, 60000)))?;
        let file = mnt.join("full.portx");
        let f = file.display().to_string();
        let rec = Recorder::start(&["-o", &f, "--netns", &ns.name])?;
        // A few hundred connections first, flushed (every second) while there is room;
        // then 3000 more, about ten events each: far more than 64 KiB.
        let mut first = Peer::spawn(&ns, "burst", &["127.0.0.1:9000", "300"])?;
        first.go()?;
        first.expect("done")?;
        first.finish()?;
        std::thread::sleep(Duration::from_millis(2500));
        let mut peer = Peer::spawn(&ns, "burst", &["127.0.0.1:9001", "3000"])?;
        peer.go()?;
        peer.expect("done")?;
        let line = rec
            .expect(|l| l.contains("No space left on device"))
            .context("the recorder did not stop on the full disk")?;
        ensure!(line.contains(&f) && line.contains("readable"), "{line}");
        peer.finish()?;
        // What was written reads back (a torn last frame at worst).
        let report = report_json(&[&file])?;
        ensure!(
            report["span"]["events"].as_u64().unwrap_or(0) > 100,
            "{}",
            report["span"]
        );
        Ok(())
    })();
    let _ = Command::new("umount").arg(&m).status();
    result?;

    let d = dir.0.display().to_string();
    for (args, want) in [
        (
            vec!["record", "--flight-recorder", &d, "--trigger", "bogus"],
            "unknown trigger `bogus`",
        ),
        (
            vec![
                "record",
                "-o",
                "/nonexistent/dir/x.portx",
                "--duration",
                "1",
            ],
            "/nonexistent/dir/x.portx",
        ),
        (
            vec!["record", "-o", "x.portx", "--max-files", "3"],
            "--max-files needs",
        ),
        (vec!["report", "/nonexistent.portx"], "/nonexistent.portx"),
        (
            vec!["top", "--replay", "/nonexistent.portx"],
            "/nonexistent.portx",
        ),
    ] {
        let err = portx_fails(&args)?;
        ensure!(
            err.lines().count() == 1 && err.contains(want),
            "portx {args:?}: {err}"
        );
    }
    Ok(())
}
