//! Rendering events: bcc-style columns for people, NDJSON for programs. Pure.

use std::{
    io::{self, Write},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use crate::{
    events::{Kind, TraceEvent},
    workload::{Named, Workload},
};

/// The JSON shape of one event. Field names are part of portx's interface (README).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JsonEvent {
    pub ts_ns: u64,
    pub event: String,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// The cgroup's path, when it could be resolved.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Who the cgroup belongs to (pod, container, unit), when it could be resolved.
    #[serde(default)]
    pub workload: Option<Workload>,
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

impl JsonEvent {
    /// The event, with its cgroup named.
    pub fn named(e: &TraceEvent, name: Option<&Named>) -> Self {
        let mut j = Self::from(e);
        if let Some(n) = name {
            j.cgroup = Some(n.cgroup.clone());
            j.workload = Some(n.workload.clone());
        }
        j
    }
}

impl From<&TraceEvent> for JsonEvent {
    fn from(e: &TraceEvent) -> Self {
        Self {
            ts_ns: e.ts_ns,
            event: e.kind.as_str().to_owned(),
            pid: e.pid,
            tid: e.tid,
            comm: e.comm.to_string(),
            cgroup_id: e.cgroup_id,
            cgroup: None,
            workload: None,
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

/// Writes one NDJSON line, newline included: the JSON of [`JsonEvent`] (which snapshots
/// embed; a test checks the two agree byte for byte), written field by field into a
/// stack buffer and handed to `out` in one write. `portx trace --json` writes a line
/// per event, hundreds of thousands a second in a storm: serde's derived serializer
/// escapes every key and formats through `core::fmt`, about half of trace's CPU. The
/// schema is fixed, so keys need no escaping and numbers go through itoa; `comm`, the
/// only free-form text, goes through serde_json's escaping when it needs any; the
/// cgroup's path and workload were rendered once, when the cgroup was named.
pub fn write_json_line(
    out: &mut impl Write,
    e: &TraceEvent,
    name: Option<&Named>,
) -> io::Result<()> {
    let mut buf = [0u8; 2048];
    let mut w = LineBuf {
        buf: &mut buf,
        len: 0,
    };
    w.raw(b"{\"ts_ns\":");
    w.int(e.ts_ns);
    w.raw(b",\"event\":");
    w.ident(e.kind.as_str());
    w.raw(b",\"pid\":");
    w.int(e.pid);
    w.raw(b",\"tid\":");
    w.int(e.tid);
    w.raw(b",\"comm\":");
    w.string(&e.comm)?;
    w.raw(b",\"cgroup_id\":");
    w.int(e.cgroup_id);
    w.raw(b",");
    match name {
        Some(n) => w.raw(n.json_fields().as_bytes()),
        None => w.raw(b"\"cgroup\":null,\"workload\":null"),
    }
    w.raw(b",\"netns\":");
    w.int(e.netns);
    w.raw(b",\"family\":");
    w.ident(e.family.as_str());
    w.raw(b",\"saddr\":");
    w.ip(e.saddr)?;
    w.raw(b",\"sport\":");
    w.int(e.sport);
    w.raw(b",\"daddr\":");
    w.ip(e.daddr)?;
    w.raw(b",\"dport\":");
    w.int(e.dport);
    w.raw(b",\"old_state\":");
    w.opt_ident(e.old_state.map(|s| s.name()));
    w.raw(b",\"new_state\":");
    w.opt_ident(e.new_state.map(|s| s.name()));
    w.raw(b",\"errno\":");
    w.opt_int(e.errno);
    w.raw(b",\"error\":");
    w.opt_ident(e.error_name());
    w.raw(b",\"bound_port\":");
    w.opt_int(e.bound_port);
    w.raw(b",\"sock\":\"");
    if e.sock != 0 {
        w.hex(e.sock);
    }
    w.raw(b"\"}\n");
    if w.len > w.buf.len() {
        // A cgroup path of kilobytes: the slow path, once per such line.
        let mut line = serde_json::to_vec(&JsonEvent::named(e, name)).map_err(io::Error::from)?;
        line.push(b'\n');
        return out.write_all(&line);
    }
    out.write_all(&w.buf[..w.len])
}

/// A line being built in a fixed buffer. Writes past its end are counted, not
/// stored; `write_json_line` then takes the slow path (a line without a cgroup path
/// is at most about 600 bytes).
struct LineBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl LineBuf<'_> {
    // Inlined so that the many short literals are copied as fixed-size moves, not
    // through a memcpy call each.
    #[inline(always)]
    fn raw(&mut self, b: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.len..self.len + b.len()) {
            dst.copy_from_slice(b);
        }
        self.len += b.len();
    }

    fn int(&mut self, n: impl itoa::Integer) {
        self.raw(itoa::Buffer::new().format(n).as_bytes());
    }

    /// Lower-case hex without leading zeros, as `{:x}` writes it.
    fn hex(&mut self, n: u64) {
        let mut digits = [0u8; 16];
        let mut i = digits.len();
        let mut rest = n;
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(rest & 0xf) as usize];
            rest >>= 4;
            if rest == 0 {
                break;
            }
        }
        self.raw(&digits[i..]);
    }

    /// A JSON string. Task names are nearly always plain ASCII, which needs no
    /// escaping; others go through serde_json.
    fn string(&mut self, s: &str) -> io::Result<()> {
        if s.bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            self.quoted(s);
            Ok(())
        } else {
            serde_json::to_writer(self, s).map_err(io::Error::from)
        }
    }

    fn opt_int(&mut self, n: Option<impl itoa::Integer>) {
        match n {
            Some(n) => self.int(n),
            None => self.raw(b"null"),
        }
    }

    /// A string known to need no escaping (portx's own names: kinds, states, errnos).
    fn ident(&mut self, s: &str) {
        debug_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        self.quoted(s);
    }

    /// `s` between quotes, as it is: only for text that needs no escaping.
    fn quoted(&mut self, s: &str) {
        self.raw(b"\"");
        self.raw(s.as_bytes());
        self.raw(b"\"");
    }

    fn opt_ident(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.ident(s),
            None => self.raw(b"null"),
        }
    }

    fn ip(&mut self, ip: IpAddr) -> io::Result<()> {
        self.raw(b"\"");
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.raw(b".");
                    }
                    self.int(octet);
                }
            }
            IpAddr::V6(v6) => write!(self, "{v6}")?,
        }
        self.raw(b"\"");
        Ok(())
    }
}

impl Write for LineBuf<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.raw(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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
        // The realtime read between two boot-clock reads, from the closest of a few
        // tries: read one after the other, the two clocks were apart by however long
        // the task waited in between (over a millisecond, now and then, on a busy
        // emulated CPU), and every time shown was off by it.
        let (mut window, mut real_minus_boot, mut real) = (i128::MAX, 0, 0);
        for _ in 0..5 {
            let before = read(libc::CLOCK_BOOTTIME);
            let r = read(libc::CLOCK_REALTIME);
            let after = read(libc::CLOCK_BOOTTIME);
            if after - before < window {
                window = after - before;
                real_minus_boot = r - (before + after) / 2;
                real = r;
            }
        }
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
        Self::new(real_minus_boot, utc_offset_s)
    }

    /// Realtime minus boottime, nanoseconds: a boot-time stamp plus this is wall time.
    pub fn boot_to_wall_ns(&self) -> i128 {
        self.realtime_minus_boot_ns
    }

    /// Seconds east of UTC of the local time zone.
    pub fn utc_offset_s(&self) -> i64 {
        self.utc_offset_s
    }

    /// RFC 3339 (UTC, milliseconds) of a boot-time timestamp.
    pub fn rfc3339(&self, boot_ns: u64) -> String {
        crate::views::time::rfc3339(i128::from(boot_ns) + self.realtime_minus_boot_ns)
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

/// `n` and `noun`, plural unless one ("1 socket", "2 sockets").
pub fn counted(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
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
/// Width of the STATE/ERROR column when WORKLOAD follows it (`--wide`): the longest
/// transition, `NEW_SYN_RECV -> ESTABLISHED`.
const DETAIL_WIDTH: usize = 27;
/// Terminal columns from which the WORKLOAD column is shown without `--wide`.
pub const WIDE_COLUMNS: u16 = 180;

/// The header of `portx trace`'s table, with the WORKLOAD column or without.
pub fn text_header(wide: bool) -> String {
    if wide {
        format!(
            "{TEXT_HEADER:<width$} WORKLOAD",
            width = TEXT_HEADER.len() + DETAIL_WIDTH - "STATE/ERROR".len()
        )
    } else {
        TEXT_HEADER.to_owned()
    }
}

/// One line of `portx trace`'s table; `workload` is the WORKLOAD column (`--wide`):
/// `Some("")` when the cgroup has no name.
pub fn text_line(e: &TraceEvent, clock: &Clock, workload: Option<&str>) -> String {
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
    let line = format!(
        "{:<12} {:<7} {:<16} {:<11} {:<14} {:<28} {:<28} ",
        clock.time_of_day(e.ts_ns),
        pid,
        comm,
        e.netns,
        e.kind.as_str(),
        endpoint(e.saddr, e.sport),
        endpoint(e.daddr, e.dport),
    );
    match workload {
        Some(w) => format!(
            "{line}{detail:<DETAIL_WIDTH$} {}",
            if w.is_empty() { "-" } else { w }
        ),
        None => format!("{line}{detail}"),
    }
    .trim_end()
    .to_owned()
}

/// Every field of a `portx trace --json` line (README), for tests of what prints them.
#[cfg(test)]
pub(crate) const TRACE_JSON_FIELDS: [&str; 20] = [
    "ts_ns",
    "event",
    "pid",
    "tid",
    "comm",
    "cgroup_id",
    "cgroup",
    "workload",
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
    "bound_port",
    "sock",
];

#[cfg(test)]
mod tests {
    use portx_common::EventKind;

    use super::*;
    use crate::events::{decode_event, tests::raw_event};

    /// What `portx trace --json` prints for `ev`, without the newline.
    fn json_line(ev: &TraceEvent) -> String {
        named_json_line(ev, None)
    }

    fn named_json_line(ev: &TraceEvent, name: Option<&Named>) -> String {
        let mut out = Vec::new();
        write_json_line(&mut out, ev, name).unwrap();
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
        for key in TRACE_JSON_FIELDS {
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
        for kind in EventKind::ALL {
            let mut raw = raw_event(kind);
            raw.errno = 98;
            raw.bound_port = 40001;
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
            // Control characters and non-ASCII text in the name.
            raw.header.owner.comm[..7].copy_from_slice("\u{1}\t\u{e9}x\u{7f}!".as_bytes());
            raw.bound_port = 0;
            cases.push(raw);
        }
        // Socket addresses of every hex width (the writer drops leading zeros).
        for sk in [1, 0xf, 0x10, 0xabc, u64::MAX] {
            let mut raw = raw_event(EventKind::State);
            raw.skaddr = sk;
            cases.push(raw);
        }
        let index = crate::workload::kubelet::Index::default();
        let names = [
            Named::new("/system.slice/nginx.service", &index),
            Named::new(
                &format!(
                    "/kubepods/besteffort/pod{}/{}",
                    "0".repeat(32),
                    "a".repeat(64)
                ),
                &index,
            ),
            Named::new("/odd \"path\"\\ \u{1}\u{e9}", &index),
            // Longer than the line buffer: the slow path writes the same JSON.
            Named::new(&format!("/deep{}", "/x".repeat(2000)), &index),
        ];
        for raw in cases {
            let ev = decode_event(&raw).unwrap();
            assert_eq!(
                json_line(&ev),
                serde_json::to_string(&JsonEvent::from(&ev)).unwrap()
            );
            for n in &names {
                assert_eq!(
                    named_json_line(&ev, Some(n)),
                    serde_json::to_string(&JsonEvent::named(&ev, Some(n))).unwrap()
                );
            }
        }
    }

    #[test]
    fn json_names_the_workload() {
        let ev = decode_event(&raw_event(EventKind::Connect)).unwrap();
        let n = Named::new("/system.slice/nginx.service", &Default::default());
        let v: serde_json::Value = serde_json::from_str(&named_json_line(&ev, Some(&n))).unwrap();
        assert_eq!(v["cgroup"], "/system.slice/nginx.service");
        assert_eq!(
            v["workload"],
            serde_json::json!({"kind": "service", "name": "nginx.service", "unit": "nginx.service"})
        );
        let v: serde_json::Value = serde_json::from_str(&json_line(&ev)).unwrap();
        assert_eq!(
            (&v["cgroup"], &v["workload"]),
            (&serde_json::Value::Null, &serde_json::Value::Null)
        );
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
        let line = text_line(&ev, &clock, None);
        assert!(line.starts_with("00:00:00.123 42      curl"), "{line}");
        assert!(line.contains("127.0.0.1:40000"), "{line}");
        assert!(line.ends_with("CLOSE -> SYN_SENT"), "{line}");
        // --wide: WORKLOAD under its header, '-' when unnamed.
        let wide = text_line(&ev, &clock, Some("pod ns/web (api)"));
        let header = text_header(true);
        assert_eq!(
            wide.find("pod ns/web"),
            header.find("WORKLOAD"),
            "{header}\n{wide}"
        );
        assert!(wide.contains("CLOSE -> SYN_SENT"), "{wide}");
        assert!(text_line(&ev, &clock, Some("")).ends_with(" -"));
        assert_eq!(text_header(false), TEXT_HEADER);

        let mut raw = raw_event(EventKind::BindError);
        raw.errno = 98;
        raw.family = portx_common::uapi::AF_INET6;
        raw.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
        raw.header.owner.pid = 0;
        let line = text_line(&decode_event(&raw).unwrap(), &clock, None);
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
        // RFC 3339 is in UTC whatever the local zone: day 20,000 is 2024-10-04.
        assert_eq!(clock.rfc3339(boot), "2024-10-04T01:02:03.456Z");
    }
}
