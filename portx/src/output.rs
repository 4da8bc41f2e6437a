//! Rendering events: bcc-style columns for people, NDJSON for programs. Pure.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::event::{Kind, TraceEvent};

/// The JSON shape of one event. Field names are part of portx's interface (README).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JsonEvent {
    pub ts_ns: u64,
    pub event: String,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub netns: u32,
    pub family: String,
    pub saddr: String,
    pub sport: u16,
    pub daddr: String,
    pub dport: u16,
    pub old_state: Option<String>,
    pub new_state: Option<String>,
    pub errno: Option<u32>,
    pub error: Option<String>,
    /// `bind`: the port the socket got (differs from `sport` when it asked for 0).
    pub bound_port: Option<u16>,
    /// Kernel socket address as hex, "" when unknown: groups the events of one socket.
    pub sock: String,
}

impl From<&TraceEvent> for JsonEvent {
    fn from(e: &TraceEvent) -> Self {
        Self {
            ts_ns: e.ts_ns,
            event: e.kind.as_str().to_owned(),
            pid: e.pid,
            tid: e.tid,
            comm: e.comm.clone(),
            cgroup_id: e.cgroup_id,
            netns: e.netns,
            family: e.family.as_str().to_owned(),
            saddr: e.saddr.to_string(),
            sport: e.sport,
            daddr: e.daddr.to_string(),
            dport: e.dport,
            old_state: e.old_state.map(|s| s.name().to_owned()),
            new_state: e.new_state.map(|s| s.name().to_owned()),
            errno: e.errno,
            error: e.error_name().map(str::to_owned),
            bound_port: e.bound_port,
            sock: if e.sock == 0 {
                String::new()
            } else {
                format!("{:x}", e.sock)
            },
        }
    }
}

/// The same JSON as [`JsonEvent`] (which snapshots embed), serialized straight from
/// the event: `portx trace --json` writes one per event, and building a `JsonEvent`
/// first costs eight allocations each.
#[derive(Serialize)]
struct JsonEventRef<'a> {
    ts_ns: u64,
    event: &'static str,
    pid: u32,
    tid: u32,
    comm: &'a str,
    cgroup_id: u64,
    netns: u32,
    family: &'static str,
    #[serde(serialize_with = "as_display")]
    saddr: IpAddr,
    sport: u16,
    #[serde(serialize_with = "as_display")]
    daddr: IpAddr,
    dport: u16,
    old_state: Option<&'static str>,
    new_state: Option<&'static str>,
    errno: Option<u32>,
    error: Option<&'static str>,
    bound_port: Option<u16>,
    #[serde(serialize_with = "sock_hex")]
    sock: u64,
}

fn as_display<S: serde::Serializer>(v: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn sock_hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    if *v == 0 {
        s.serialize_str("")
    } else {
        s.collect_str(&format_args!("{v:x}"))
    }
}

/// Writes one NDJSON line, newline included.
pub fn write_json_line(out: &mut impl std::io::Write, e: &TraceEvent) -> std::io::Result<()> {
    let json = JsonEventRef {
        ts_ns: e.ts_ns,
        event: e.kind.as_str(),
        pid: e.pid,
        tid: e.tid,
        comm: &e.comm,
        cgroup_id: e.cgroup_id,
        netns: e.netns,
        family: e.family.as_str(),
        saddr: e.saddr,
        sport: e.sport,
        daddr: e.daddr,
        dport: e.dport,
        old_state: e.old_state.map(|s| s.name()),
        new_state: e.new_state.map(|s| s.name()),
        errno: e.errno,
        error: e.error_name(),
        bound_port: e.bound_port,
        sock: e.sock,
    };
    serde_json::to_writer(&mut *out, &json).map_err(std::io::Error::from)?;
    out.write_all(b"\n")
}

/// Converts the BPF boot-time clock to wall-clock time of day.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Realtime minus boottime, in nanoseconds, taken once at start-up.
    realtime_minus_boot_ns: i128,
    /// Seconds east of UTC for the local time zone.
    utc_offset_s: i64,
}

impl Clock {
    pub fn new(realtime_minus_boot_ns: i128, utc_offset_s: i64) -> Self {
        Self {
            realtime_minus_boot_ns,
            utc_offset_s,
        }
    }

    /// Reads the clocks and the local time zone now.
    pub fn now() -> Self {
        fn read(clock: libc::clockid_t) -> i128 {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid pointer to a timespec.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
        }
        let real = read(libc::CLOCK_REALTIME);
        let boot = read(libc::CLOCK_BOOTTIME);
        let secs = (real / 1_000_000_000) as libc::time_t;
        // SAFETY: localtime_r writes into our tm.
        let utc_offset_s = unsafe {
            let mut tm: libc::tm = std::mem::zeroed();
            if libc::localtime_r(&secs, &mut tm).is_null() {
                0
            } else {
                tm.tm_gmtoff
            }
        };
        Self::new(real - boot, utc_offset_s)
    }

    /// `HH:MM:SS.mmm` local time of a boot-time timestamp.
    pub fn time_of_day(&self, boot_ns: u64) -> String {
        let real_ns = i128::from(boot_ns) + self.realtime_minus_boot_ns;
        let local_ms = real_ns / 1_000_000 + i128::from(self.utc_offset_s) * 1000;
        let ms_of_day = local_ms.rem_euclid(86_400_000);
        let (h, rest) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
        let (m, rest) = (rest / 60_000, rest % 60_000);
        format!("{h:02}:{m:02}:{:02}.{:03}", rest / 1000, rest % 1000)
    }
}

/// `127.0.0.1:80` or `[::1]:80`.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

pub const TEXT_HEADER: &str = concat!(
    "TIME         PID     COMM             NETNS       EVENT          ",
    "LADDR:LPORT                  RADDR:RPORT                  STATE/ERROR"
);

/// One line of `portx trace`'s table.
pub fn text_line(e: &TraceEvent, clock: &Clock) -> String {
    let detail = match e.kind {
        Kind::State => format!(
            "{} -> {}",
            e.old_state.map_or("?", |s| s.name()),
            e.new_state.map_or("?", |s| s.name())
        ),
        Kind::ConnectError | Kind::BindError => match (e.error_name(), e.errno) {
            (Some(name), _) => name.to_owned(),
            (None, Some(n)) => format!("errno {n}"),
            (None, None) => String::new(),
        },
        Kind::Bind => match e.bound_port {
            Some(p) if p != e.sport => format!("got port {p}"),
            _ => String::new(),
        },
        Kind::TimewaitEnd => "TIME_WAIT freed".to_owned(),
        Kind::Connect => String::new(),
    };
    let pid = if e.pid == 0 {
        "-".to_owned()
    } else {
        e.pid.to_string()
    };
    let comm = if e.comm.is_empty() { "-" } else { &e.comm };
    format!(
        "{:<12} {:<7} {:<16} {:<11} {:<14} {:<28} {:<28} {}",
        clock.time_of_day(e.ts_ns),
        pid,
        comm,
        e.netns,
        e.kind.as_str(),
        endpoint(e.saddr, e.sport),
        endpoint(e.daddr, e.dport),
        detail
    )
    .trim_end()
    .to_owned()
}

#[cfg(test)]
mod tests {
    use portx_common::EventKind;

    use super::*;
    use crate::event::{decode_event, tests::raw_event};

    /// What `portx trace --json` prints for `ev`, without the newline.
    fn json_line(ev: &TraceEvent) -> String {
        let mut out = Vec::new();
        write_json_line(&mut out, ev).unwrap();
        let mut line = String::from_utf8(out).unwrap();
        assert_eq!(line.pop(), Some('\n'));
        line
    }

    #[test]
    fn json_has_the_documented_fields() {
        let mut raw = raw_event(EventKind::ConnectError);
        raw.errno = 99;
        let ev = decode_event(&raw).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json_line(&ev)).unwrap();
        for key in [
            "ts_ns",
            "event",
            "pid",
            "tid",
            "comm",
            "cgroup_id",
            "netns",
            "family",
            "saddr",
            "sport",
            "daddr",
            "dport",
            "old_state",
            "new_state",
            "errno",
            "error",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["event"], "connect_error");
        assert_eq!(v["errno"], 99);
        assert_eq!(v["error"], "EADDRNOTAVAIL");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["daddr"], "127.0.0.2");
        assert_eq!(v["dport"], 3306);
        assert_eq!(v["old_state"], serde_json::Value::Null);
        assert_eq!(v["sock"], "ffff888000001000");
    }

    #[test]
    fn written_json_is_the_documented_json() {
        let mut cases = Vec::new();
        for kind in [
            EventKind::State,
            EventKind::Connect,
            EventKind::ConnectError,
            EventKind::Bind,
            EventKind::BindError,
            EventKind::TimewaitEnd,
        ] {
            let mut raw = raw_event(kind);
            raw.errno = 98;
            cases.push(raw);
            // IPv6, no socket, a comm that needs escaping.
            raw.family = portx_common::uapi::AF_INET6;
            raw.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
            raw.daddr = "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets();
            raw.skaddr = 0;
            raw.header.owner.comm[..4].copy_from_slice(b"a\"b\\");
            cases.push(raw);
        }
        for raw in cases {
            let ev = decode_event(&raw).unwrap();
            assert_eq!(
                json_line(&ev),
                serde_json::to_string(&JsonEvent::from(&ev)).unwrap()
            );
        }
    }

    #[test]
    fn json_state_names() {
        let ev = decode_event(&raw_event(EventKind::State)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json_line(&ev)).unwrap();
        assert_eq!(v["old_state"], "CLOSE");
        assert_eq!(v["new_state"], "SYN_SENT");
        assert_eq!(v["errno"], serde_json::Value::Null);
    }

    #[test]
    fn text_columns() {
        let clock = Clock::new(0, 0);
        let ev = decode_event(&raw_event(EventKind::State)).unwrap();
        let line = text_line(&ev, &clock);
        assert!(line.starts_with("00:00:00.123 42      curl"), "{line}");
        assert!(line.contains("127.0.0.1:40000"), "{line}");
        assert!(line.ends_with("CLOSE -> SYN_SENT"), "{line}");

        let mut raw = raw_event(EventKind::BindError);
        raw.errno = 98;
        raw.family = portx_common::uapi::AF_INET6;
        raw.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
        raw.header.owner.pid = 0;
        let line = text_line(&decode_event(&raw).unwrap(), &clock);
        assert!(line.contains("[::1]:40000"), "{line}");
        assert!(line.ends_with("EADDRINUSE"), "{line}");
        assert!(
            line.contains(" -       "),
            "unknown pid shown as '-': {line}"
        );
    }

    #[test]
    fn clock_converts_boot_time_to_time_of_day() {
        // 1 h 2 min 3.456 s after midnight UTC, shown in UTC+1.
        let boot = 1_000_000_000u64;
        let real = (3_723_456i128 + 86_400_000 * 20_000) * 1_000_000;
        let clock = Clock::new(real - i128::from(boot), 3600);
        assert_eq!(clock.time_of_day(boot), "02:02:03.456");
    }
}
