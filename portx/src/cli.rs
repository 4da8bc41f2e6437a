//! Command-line interface.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "portx",
    version,
    about = "Live eBPF view of who is eating ephemeral ports and why bind()/connect() fail"
)]
pub struct Cli {
    /// Say which attach points and kernel offsets are in use.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print one line per TCP state change, connect() and bind(), as they happen.
    Trace(TraceArgs),
    /// Live view of ephemeral port use per destination, process and cgroup.
    Top(TopArgs),
    /// Record events and the model's state to a file, or keep the last minutes in
    /// memory and write them when a trigger fires (--flight-recorder).
    Record(RecordArgs),
    /// Audit the port configuration and say exactly what to change.
    /// Exit status: 0 nothing above info, 1 warnings, 2 critical, 3+ errors.
    Check(CheckArgs),
    /// Offline incident report of a recording (one file or a rotation set): time span,
    /// completeness, failures and who held the port, each destination's peak.
    Report(ReportArgs),
    /// Prometheus exporter: the `top` model behind /metrics, /healthz and /.
    Serve(ServeArgs),
}

/// `portx serve`'s default address: loopback, and a port outside both the range
/// Prometheus's port list has filled (9100-9999) and Linux's default ephemeral range
/// (32768-60999), so the exporter cannot collide with the connections it watches.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:17117";

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Address and port to serve on.
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    pub listen: std::net::SocketAddr,
    /// Only this network namespace (name, path or inode); filtered in the kernel.
    #[arg(long, value_name = "NAME|PATH|INODE")]
    pub netns: Option<String>,
    /// Destinations (and holders) exported per namespace.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub top_k: u16,
    /// Do not compare the TIME_WAIT model with the kernel's sock_diag view.
    #[arg(long)]
    pub no_drift_check: bool,
    /// Seconds between TIME_WAIT drift checks.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_secs)]
    pub drift_interval: f64,
    /// Ring buffer size in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 16, value_parser = parse_ring_mib)]
    pub ring_mib: u32,
    #[command(flatten)]
    pub host: HostArgs,
}

fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not ADDR:PORT (e.g. 127.0.0.1:17117 or [::1]:17117)"))
}

#[derive(Debug, Args, Clone)]
pub struct ReportArgs {
    /// Capture files of one recording (several: a rotation set, in any order).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<std::path::PathBuf>,
    /// Print the report as one JSON object (fields in the README).
    #[arg(long, conflicts_with = "events")]
    pub json: bool,
    /// Print the recorded events as NDJSON, the fields of `portx trace --json`.
    #[arg(long)]
    pub events: bool,
    /// Also write the report as one self-contained HTML page (mode 0600).
    #[arg(long, value_name = "OUT")]
    pub html: Option<std::path::PathBuf>,
    /// Overwrite the --html file if it exists.
    #[arg(long, requires = "html")]
    pub force: bool,
}

#[derive(Debug, Args, Clone)]
pub struct CheckArgs {
    /// Print JSON (one object; an array with --all-netns).
    #[arg(long)]
    pub json: bool,
    /// Check this network namespace (name, path or inode) instead of the current one.
    #[arg(long, value_name = "NAME|PATH|INODE", conflicts_with = "all_netns")]
    pub netns: Option<String>,
    /// Check every network namespace that has a process or a name.
    #[arg(long)]
    pub all_netns: bool,
    /// Also watch the namespace's live traffic for SECS seconds (root: loads the BPF
    /// programs) and add the diagnoses (why ports run out, what to change).
    #[arg(long, value_name = "SECS", value_parser = parse_secs, conflicts_with = "all_netns")]
    pub watch: Option<f64>,
    /// Say which attach points are in use (with --watch).
    #[arg(skip)]
    pub verbose: bool,
}

/// What `portx top` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Dest,
    Process,
    /// Pods, containers and units (`cgroup` is the older name).
    #[value(alias = "cgroup")]
    Workload,
}

#[derive(Debug, Args, Clone)]
pub struct TopArgs {
    /// Print one snapshot after --interval and exit.
    #[arg(long)]
    pub once: bool,
    /// Print snapshots as JSON (fields in the README).
    #[arg(long)]
    pub json: bool,
    /// Seconds between printed snapshots (with --once: how long to watch first).
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = parse_secs)]
    pub interval: f64,
    /// Only this network namespace: a name from `ip netns`, a path, or an inode.
    #[arg(long, value_name = "NAME|PATH|INODE")]
    pub netns: Option<String>,
    /// Only this process's ports.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Group by destination, process or workload.
    #[arg(long, value_enum, default_value_t = By::Dest)]
    pub by: By,
    #[command(flatten)]
    pub host: HostArgs,
    /// Do not compare the TIME_WAIT model with the kernel's sock_diag view.
    #[arg(long)]
    pub no_drift_check: bool,
    /// Seconds between TIME_WAIT drift checks.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_secs)]
    pub drift_interval: f64,
    /// Ring buffer size in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 16, value_parser = parse_ring_mib)]
    pub ring_mib: u32,
    /// Play recordings (`portx record` files; several: one rotated set) instead of
    /// watching the kernel. No root needed.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with_all = ["ring_mib", "no_drift_check"])]
    pub replay: Option<Vec<std::path::PathBuf>>,
    /// With --replay: play at this many times the recorded pace (0: as fast as possible).
    #[arg(long, value_name = "X", default_value_t = 1.0, value_parser = parse_speed, requires = "replay")]
    pub speed: f64,
}

/// The events `portx trace` and `portx record` take.
#[derive(Debug, Args, Clone, Default)]
pub struct EventFilterArgs {
    /// Only events of this process id (the socket's owner for state changes).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only events whose process name is exactly this.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only events with this port on either side.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only this network namespace: a name from `ip netns`, a path, or an inode.
    #[arg(long, value_name = "NAME|PATH|INODE")]
    pub netns: Option<String>,
    /// Only failed connect() and bind() calls.
    #[arg(long)]
    pub errors: bool,
}

#[derive(Debug, Args, Clone)]
pub struct RecordArgs {
    /// Write here (with rotation: files named FILE's stem plus their start time).
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present = "flight_recorder",
        conflicts_with = "flight_recorder"
    )]
    pub output: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub filter: EventFilterArgs,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
    /// Start a new file when the current one reaches this many MiB.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub rotate_size: Option<u64>,
    /// Start a new file every SECS seconds of wall-clock time (aligned to the clock).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub rotate_time: Option<u64>,
    /// Keep at most N files of a rotated set (the oldest removed).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_files: Option<u64>,
    /// Write the model's state (sockets held, TIME_WAIT) this often, besides at the
    /// start of each file.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = parse_secs)]
    pub state_every: f64,
    /// Keep the last --window seconds in memory and write them to a new file in DIR
    /// when a --trigger fires.
    #[arg(long, value_name = "DIR", requires = "trigger")]
    pub flight_recorder: Option<std::path::PathBuf>,
    /// Flight recorder: seconds of history kept before a trigger.
    #[arg(long, value_name = "SECS", default_value_t = 300, requires = "flight_recorder", value_parser = clap::value_parser!(u32).range(1..=86400))]
    pub window: u32,
    /// Flight recorder: what makes it write: failure, failure:ERRNO, util:PCT,
    /// fail-rate:N, signal (SIGUSR1). Repeat or separate with commas.
    #[arg(
        long,
        value_name = "SPEC",
        value_delimiter = ',',
        requires = "flight_recorder"
    )]
    pub trigger: Vec<String>,
    /// Flight recorder: seconds recorded after the trigger before writing.
    #[arg(long, value_name = "SECS", default_value_t = 30, requires = "flight_recorder", value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub post: u32,
    /// Flight recorder: stop after writing N files.
    #[arg(long, value_name = "N", requires = "flight_recorder", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_dumps: Option<u32>,
    /// Flight recorder: memory for the window, MiB (the oldest history goes first).
    #[arg(long, value_name = "MIB", default_value_t = 64, requires = "flight_recorder", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub buffer_mib: u32,
    #[command(flatten)]
    pub host: HostArgs,
    /// Do not compare the TIME_WAIT model with the kernel's sock_diag view.
    #[arg(long)]
    pub no_drift_check: bool,
    /// Ring buffer size in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 16, value_parser = parse_ring_mib)]
    pub ring_mib: u32,
}

/// Where the host's files are, for naming workloads from inside a container.
#[derive(Debug, Args, Clone)]
pub struct HostArgs {
    /// Where the host's /proc, /sys/fs/cgroup and /var/log are (a DaemonSet mounts
    /// them under e.g. /host).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_root: std::path::PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct TraceArgs {
    /// Print NDJSON, one object per event (fields in the README).
    #[arg(long)]
    pub json: bool,
    /// Add the WORKLOAD column (pod, container, unit) to the text output; shown
    /// anyway on a terminal of at least 180 columns.
    #[arg(long, conflicts_with = "json")]
    pub wide: bool,
    #[command(flatten)]
    pub host: HostArgs,
    #[command(flatten)]
    pub filter: EventFilterArgs,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Ring buffer size in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 16, value_parser = parse_ring_mib)]
    pub ring_mib: u32,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 365.0 * 86400.0 {
        return Err(format!(
            "`{s}` must be above 0 seconds and at most one year"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn parse_secs(s: &str) -> Result<f64, String> {
    parse_duration(s).map(|d| d.as_secs_f64())
}

fn parse_speed(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !x.is_finite() || !(0.0..=1e6).contains(&x) {
        return Err(format!(
            "`{s}` must be between 0 (as fast as possible) and 1000000"
        ));
    }
    Ok(x)
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    if !n.is_power_of_two() || n > 1024 {
        return Err(format!("`{s}` must be a power of two between 1 and 1024"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn trace(args: &[&str]) -> Result<TraceArgs, clap::Error> {
        let mut argv = vec!["portx", "trace"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|c| match c.command {
            Command::Trace(t) => t,
            _ => unreachable!("parsed `trace`"),
        })
    }

    #[test]
    fn parses_trace_flags() {
        let t = trace(&[
            "--json",
            "--pid",
            "7",
            "--comm",
            "nginx",
            "--port",
            "3306",
            "--netns",
            "blue",
            "--errors",
            "--duration",
            "1.5",
        ])
        .unwrap();
        assert!(t.json && t.filter.errors);
        assert_eq!(t.filter.pid, Some(7));
        assert_eq!(t.filter.comm.as_deref(), Some("nginx"));
        assert_eq!(t.filter.port, Some(3306));
        assert_eq!(t.filter.netns.as_deref(), Some("blue"));
        assert_eq!(t.duration, Some(std::time::Duration::from_millis(1500)));
        assert_eq!(t.ring_mib, 16);
    }

    #[test]
    fn rejects_bad_flags_with_a_reason() {
        let msg = |args: &[&str]| trace(args).unwrap_err().to_string();
        assert!(msg(&["--port", "70000"]).contains("70000"));
        assert!(msg(&["--duration", "0"]).contains("must be above 0 seconds and at most one year"));
        assert!(msg(&["--duration", "soon"]).contains("not a number"));
        assert!(msg(&["--ring-mib", "3"]).contains("power of two"));
        assert!(msg(&["--pid", "x"]).contains("invalid value"));
        assert!(msg(&["--bogus"]).contains("--bogus"));
    }

    #[test]
    fn parses_top_flags() {
        let c = Cli::try_parse_from([
            "portx",
            "top",
            "--once",
            "--json",
            "--interval",
            "0.5",
            "--by",
            "cgroup",
            "--pid",
            "3",
            "--no-drift-check",
        ])
        .unwrap();
        let Command::Top(t) = c.command else {
            panic!("not top")
        };
        assert!(t.once && t.json && t.no_drift_check);
        assert_eq!((t.interval, t.by, t.pid), (0.5, By::Workload, Some(3)));
        assert_eq!(t.drift_interval, 10.0);
        let err = Cli::try_parse_from(["portx", "top", "--by", "port"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("possible values: dest, process, workload"),
            "{err}"
        );
    }

    #[test]
    fn parses_report_flags() {
        let c = Cli::try_parse_from([
            "portx", "report", "b.portx", "a.portx", "--html", "out.html", "--force", "--json",
        ])
        .unwrap();
        let Command::Report(r) = c.command else {
            panic!("not report")
        };
        assert_eq!(r.files.len(), 2);
        assert!(r.json && r.force && !r.events);
        assert_eq!(r.html.as_deref(), Some(std::path::Path::new("out.html")));
        assert!(Cli::try_parse_from(["portx", "report"]).is_err());
        assert!(Cli::try_parse_from(["portx", "report", "a", "--json", "--events"]).is_err());
        assert!(Cli::try_parse_from(["portx", "report", "a", "--force"]).is_err());
    }

    #[test]
    fn parses_record_and_replay_flags() {
        let c = Cli::try_parse_from([
            "portx",
            "record",
            "-o",
            "x.portx",
            "--netns",
            "blue",
            "--port",
            "3306",
            "--rotate-time",
            "60",
            "--max-files",
            "5",
            "--duration",
            "2",
        ])
        .unwrap();
        let Command::Record(r) = c.command else {
            panic!("not record")
        };
        assert_eq!(r.output.as_deref(), Some(std::path::Path::new("x.portx")));
        assert_eq!(
            (r.filter.netns.as_deref(), r.filter.port),
            (Some("blue"), Some(3306))
        );
        assert_eq!(
            (r.rotate_time, r.max_files, r.state_every),
            (Some(60), Some(5), 60.0)
        );
        let c = Cli::try_parse_from([
            "portx",
            "record",
            "--flight-recorder",
            "/d",
            "--trigger",
            "failure,util:90",
            "--trigger",
            "signal",
            "--post",
            "5",
        ])
        .unwrap();
        let Command::Record(r) = c.command else {
            panic!("not record")
        };
        assert_eq!(r.trigger, ["failure", "util:90", "signal"]);
        assert_eq!((r.window, r.post, r.buffer_mib), (300, 5, 64));
        let err = |args: &[&str]| {
            let mut argv = vec!["portx"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).unwrap_err().to_string()
        };
        // One of -o and --flight-recorder; a flight recorder needs a trigger.
        assert!(err(&["record"]).contains("--output"));
        assert!(
            err(&[
                "record",
                "-o",
                "x",
                "--flight-recorder",
                "/d",
                "--trigger",
                "failure"
            ])
            .contains("cannot be used with")
        );
        assert!(err(&["record", "--flight-recorder", "/d"]).contains("--trigger"));
        assert!(err(&["record", "-o", "x", "--window", "10"]).contains("--flight-recorder"));
        let c =
            Cli::try_parse_from(["portx", "top", "--replay", "a", "b", "--speed", "0"]).unwrap();
        let Command::Top(t) = c.command else {
            panic!("not top")
        };
        assert_eq!(t.replay.map(|v| v.len()), Some(2));
        assert_eq!(t.speed, 0.0);
        assert!(err(&["top", "--speed", "2"]).contains("--replay"));
        assert!(err(&["top", "--replay", "a", "--speed=-1"]).contains("between 0"));
    }

    #[test]
    fn parses_serve_flags() {
        let c = Cli::try_parse_from(["portx", "serve"]).unwrap();
        let Command::Serve(s) = c.command else {
            panic!("not serve")
        };
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.top_k, 20);
        let c =
            Cli::try_parse_from(["portx", "serve", "--listen", "[::1]:9", "--top-k", "5"]).unwrap();
        let Command::Serve(s) = c.command else {
            panic!("not serve")
        };
        assert_eq!((s.listen.port(), s.top_k), (9, 5));
        let err = Cli::try_parse_from(["portx", "serve", "--listen", "localhost"]).unwrap_err();
        assert!(err.to_string().contains("is not ADDR:PORT"), "{err}");
        assert!(Cli::try_parse_from(["portx", "serve", "--top-k", "0"]).is_err());
    }

    #[test]
    fn verbose_is_global() {
        let c = Cli::try_parse_from(["portx", "trace", "-v"]).unwrap();
        assert!(c.verbose);
    }
}
