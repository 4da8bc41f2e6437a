//! Test fixtures: network namespaces, peer processes, and a running `portx trace`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::MetadataExt as _,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::Value;

/// How long any single wait in a test may take before the test fails:
/// `PORTX_TEST_WAIT_SECS`, 20 s by default (the QEMU runs, emulated, set more).
pub fn wait() -> Duration {
    static WAIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *WAIT.get_or_init(|| {
        let secs = std::env::var("PORTX_TEST_WAIT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20);
        Duration::from_secs(secs)
    })
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A temporary folder, removed when the test ends, however it ends.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "portx-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace made for one test (loopback up, optional port range) and
/// removed when dropped.
pub struct Netns {
    pub name: String,
    pub inode: u32,
}

impl Netns {
    pub fn new(port_range: Option<(u16, u16)>) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "portx-t{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        // Constructed now so that any failure below still removes the namespace.
        let mut ns = Self { name, inode: 0 };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        if let Some((lo, hi)) = port_range {
            ns.sysctl("net/ipv4/ip_local_port_range", &format!("{lo} {hi}"))?;
        }
        ns.inode = u32::try_from(std::fs::metadata(format!("/run/netns/{}", ns.name))?.ino())?;
        Ok(ns)
    }

    /// Writes a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c"])
            .arg(format!("echo '{value}' > /proc/sys/{key}"))
            .status()?;
        ensure!(status.success(), "setting {key} in {}", self.name);
        Ok(())
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: removing netns {}: {e}", self.name);
        }
    }
}

/// Lines from a child's pipe, read on a thread so waits can time out.
struct LineReader {
    rx: mpsc::Receiver<String>,
}

impl LineReader {
    fn new(pipe: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { rx }
    }

    fn next(&self, timeout: Duration) -> Result<String> {
        self.rx
            .recv_timeout(timeout)
            .map_err(|_| anyhow!("no output within {timeout:?}"))
    }

    /// `first` (an error line) and what follows it, the last lines of a long message
    /// (a verifier log ends with the reason): the whole error for the test's failure.
    pub fn error_with_rest(&self, first: String) -> String {
        let mut lines = vec![first];
        while let Ok(l) = self.next(Duration::from_secs(1)) {
            lines.push(l);
            if lines.len() > 2000 {
                break;
            }
        }
        if lines.len() > 41 {
            let skipped = lines.len() - 41;
            lines.drain(1..=skipped);
            lines.insert(1, format!("[{skipped} lines left out]"));
        }
        lines.join("\n")
    }
}

/// One of the peer roles in `peer.rs`, run as its own process inside a namespace.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: LineReader,
    pub pid: u32,
    pub comm: String,
    role: String,
}

impl Peer {
    /// Starts `role args...` inside `ns` and waits until it is ready (not yet acting).
    pub fn spawn(ns: &Netns, role: &str, args: &[&str]) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&exe)
            .args(args)
            .env(crate::peer::ROLE_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning peer")?;
        let stdout = LineReader::new(child.stdout.take().expect("piped"));
        let stdin = child.stdin.take();
        let mut peer = Self {
            pid: child.id(),
            child,
            stdin,
            stdout,
            comm: String::new(),
            role: role.to_owned(),
        };
        peer.expect("ready")?;
        // `ip netns exec` execs the peer, so the child's pid is the peer's.
        peer.comm = std::fs::read_to_string(format!("/proc/{}/comm", peer.pid))?
            .trim()
            .to_owned();
        Ok(peer)
    }

    /// Lets the peer act.
    pub fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("peer stdin closed")?;
        writeln!(stdin, "go")?;
        stdin.flush()?;
        Ok(())
    }

    /// The next line of output.
    pub fn line(&mut self) -> Result<String> {
        self.stdout
            .next(wait())
            .with_context(|| format!("peer {}", self.role))
    }

    /// Reads lines until one starting with `prefix`, returning the rest of it.
    pub fn expect(&mut self, prefix: &str) -> Result<String> {
        loop {
            let line = self.line()?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
    }

    /// Reads lines until `done`: the rest of each that starts with `prefix`, parsed.
    pub fn until_done<T>(&mut self, prefix: &str) -> Result<Vec<T>>
    where
        T: std::str::FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let mut found = Vec::new();
        loop {
            let line = self.line()?;
            if line == "done" {
                return Ok(found);
            }
            if let Some(rest) = line.strip_prefix(prefix) {
                found.push(
                    rest.parse()
                        .with_context(|| format!("peer said {line:?}"))?,
                );
            }
        }
    }

    /// Closes stdin (the peer's signal to exit) and waits for it.
    pub fn finish(&mut self) -> Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + wait();
        loop {
            if let Some(st) = self.child.try_wait()? {
                ensure!(st.success(), "peer {} exited with {st}", self.role);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("peer {} did not exit", self.role);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What `portx trace` printed on stderr when it stopped.
#[derive(Debug)]
pub struct Summary {
    pub seen: u64,
    pub shown: u64,
    pub dropped: u64,
}

fn parse_summary(line: &str) -> Option<Summary> {
    // "portx: 10 events seen, 4 shown, 0 dropped"
    let rest = line.strip_prefix("portx: ")?;
    let nums: Vec<u64> = rest
        .split([' ', ','])
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums.len() >= 3 && rest.contains("events seen")).then(|| Summary {
        seen: nums[0],
        shown: nums[1],
        dropped: nums[2],
    })
}

/// A running `portx trace --json`, its events collected as they arrive.
pub struct Tracer {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: LineReader,
    collector: Option<thread::JoinHandle<()>>,
}

impl Tracer {
    /// Starts portx and waits until its programs are attached.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_with(args, &[]).map(|(t, _)| t)
    }

    /// Starts portx with `-v` and extra environment; also returns the attach point
    /// it chose for each need (`state`, `connect`, `bind`, `timewait`).
    pub fn start_with(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(Self, std::collections::BTreeMap<String, String>)> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portx"))
            .args(["trace", "--json", "-v"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting portx")?;
        let stderr = LineReader::new(child.stderr.take().expect("piped"));
        let mut hooks = std::collections::BTreeMap::new();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let stdout = child.stdout.take().expect("piped");
        let collector = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // A line that is not JSON is kept as a string: stop() fails on it, and a
                // test that fails early and kills portx mid-line does not panic here.
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().unwrap().push(v);
            }
        });
        loop {
            let line = stderr.next(wait()).context("waiting for portx to attach")?;
            if line.starts_with("portx: error") {
                bail!("{}", stderr.error_with_rest(line));
            }
            if line.starts_with("portx: tracing") {
                break;
            }
            // "portx: connect via fexit __inet_hash_connect"
            if let Some((hook, path)) = line
                .strip_prefix("portx: ")
                .and_then(|l| l.split_once(" via "))
            {
                hooks.insert(hook.to_owned(), path.to_owned());
            }
        }
        Ok((
            Self {
                child,
                events,
                stderr,
                collector: Some(collector),
            },
            hooks,
        ))
    }

    /// Waits until `done` holds for the events so far (or fails after [`wait`]).
    pub fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Result<()> {
        let deadline = Instant::now() + wait();
        while Instant::now() < deadline {
            let checked = Instant::now();
            if done(&self.events.lock().unwrap()) {
                return Ok(());
            }
            // A check reads every event so far: pausing four times as long as it took
            // keeps the checks to a fifth of a core, where a fixed 20 ms pause made them
            // quadratic in a burst's tens of thousands of events and, under TCG, took
            // the CPU the tracer needed.
            thread::sleep(Duration::from_millis(20).max(checked.elapsed() * 4));
        }
        // The last events only: a burst prints tens of thousands.
        const SHOWN: usize = 40;
        let events = self.events.lock().unwrap();
        bail!(
            "portx did not report {what} within {:?}; of the {} events it printed, the last {}:\n{}",
            wait(),
            events.len(),
            SHOWN.min(events.len()),
            events[events.len().saturating_sub(SHOWN)..]
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    /// Stops portx with SIGINT, as a user's Ctrl-C, and returns every event and the summary.
    pub fn stop(mut self) -> Result<(Vec<Value>, Summary)> {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + wait();
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            ensure!(Instant::now() < deadline, "portx did not stop on SIGINT");
            thread::sleep(Duration::from_millis(10));
        };
        let mut summary = None;
        while let Ok(line) = self.stderr.next(Duration::from_secs(2)) {
            if let Some(s) = parse_summary(&line) {
                summary = Some(s);
            }
        }
        ensure!(status.success(), "portx exited with {status}");
        if let Some(c) = self.collector.take() {
            c.join()
                .map_err(|_| anyhow!("portx printed invalid JSON"))?;
        }
        let events = std::mem::take(&mut *self.events.lock().unwrap());
        if let Some(bad) = events.iter().find(|v| v.is_string()) {
            bail!("portx printed a line that is not JSON: {bad}");
        }
        Ok((events, summary.context("portx printed no summary")?))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Accessors on portx's JSON events.
pub trait Ev {
    fn s(&self, key: &str) -> &str;
    fn n(&self, key: &str) -> u64;
    fn is(&self, event: &str) -> bool {
        self.s("event") == event
    }
    fn transition(&self) -> String {
        format!("{}->{}", self.s("old_state"), self.s("new_state"))
    }
}

impl Ev for Value {
    fn s(&self, key: &str) -> &str {
        self[key].as_str().unwrap_or("")
    }
    fn n(&self, key: &str) -> u64 {
        self[key].as_u64().unwrap_or(u64::MAX)
    }
}
