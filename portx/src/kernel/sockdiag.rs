//! Start-up baseline of TCP sockets per network namespace, through netlink
//! `sock_diag` (what `ss` uses), plus the two sysctls that bound ephemeral ports.
//!
//! Everything here is read through handles opened once inside the namespace: a
//! `NETLINK_SOCK_DIAG` socket answers for the namespace it was created in
//! (<https://elixir.bootlin.com/linux/v6.12/source/net/core/sock_diag.c>, `sock_net(skb->sk)`),
//! and an open `/proc/sys/net/...` file keeps reading the namespace that was current
//! when it was opened (the sysctl table is looked up at open time,
//! <https://elixir.bootlin.com/linux/v6.12/source/fs/proc/proc_sysctl.c>). So only
//! [`NetnsProbe::open`] needs `setns`, in a short-lived thread; the probe is then
//! usable from any thread, and re-reading is a `send`/`recv` loop or one `pread`.

use std::{
    cell::Cell,
    collections::BTreeMap,
    fmt,
    fs::File,
    io,
    net::IpAddr,
    os::{
        fd::AsRawFd as _,
        unix::fs::{FileExt as _, MetadataExt as _},
    },
    path::PathBuf,
};

use anyhow::{Context as _, Result, anyhow, bail};
use netlink_packet_core::{
    ErrorBuffer, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN,
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, Parseable as _,
};
use netlink_packet_sock_diag::{
    SOCK_DIAG_BY_FAMILY, SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags, Timer},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::{
    events::{Family, TcpState},
    kernel::netns::NETNS_RUN_DIR,
};

/// Bit N = TCP state N (`include/net/tcp_states.h`): ESTABLISHED (1) to NEW_SYN_RECV
/// (12). Bit 13, TCP_BOUND_INACTIVE, is left out on purpose: asking for it makes the
/// kernel also list bound-but-unconnected sockets, which are not TCP states `ss -tan`
/// shows (<https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/inet_diag.c>).
pub const ALL_STATES: u32 = 0x1ffe;
/// Only TIME_WAIT (state 6).
pub const TIME_WAIT_ONLY: u32 = state_bit(TcpState::TimeWait);
/// Every timewait socket: TIME_WAIT, and FIN_WAIT2 (which also brings full sockets in
/// FIN_WAIT2, told apart by [`DiagSocket::timewait`]).
pub const TIMEWAIT_SOCKETS: u32 = TIME_WAIT_ONLY | state_bit(TcpState::FinWait2);

/// The bit of one state in a `dump_tcp` mask.
pub const fn state_bit(state: TcpState) -> u32 {
    1 << state as u32
}

/// The mask selecting exactly `states`.
pub fn states_mask(states: impl IntoIterator<Item = TcpState>) -> u32 {
    states.into_iter().fold(0, |m, s| m | state_bit(s))
}

/// A network namespace that can be inspected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsRef {
    /// `ns.inum`, as in `/proc/PID/ns/net -> net:[INODE]`.
    pub inode: u32,
    /// Its `ip netns` name, if it has one.
    pub name: Option<String>,
    /// `/run/netns/NAME` for named namespaces (it outlives processes), else
    /// `/proc/PID/ns/net` of one process in it.
    pub path: PathBuf,
}

impl fmt::Display for NetnsRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "netns {name} (inode {})", self.inode),
            None => write!(f, "netns {} ({})", self.inode, self.path.display()),
        }
    }
}

/// `net:[4026531840]` (the target of `/proc/PID/ns/net`) to its inode.
fn parse_ns_link(link: &[u8]) -> Option<u32> {
    let digits = link.strip_prefix(b"net:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The network namespace process `pid` is in now. readlink, not stat: no need to
/// open anything; `None` for exited processes and kernel threads we may not inspect.
pub(crate) fn netns_of_pid(pid: u32) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt as _;

    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    parse_ns_link(link.as_os_str().as_bytes())
}

pub(crate) fn pids() -> io::Result<Vec<u32>> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// All network namespaces reachable through a process or an `ip netns` name,
/// deduplicated by inode and sorted by it. Processes that vanish or deny access are
/// skipped; the caller's own namespace is always included.
pub fn list_netns() -> Result<Vec<NetnsRef>> {
    let mut found = BTreeMap::<u32, NetnsRef>::new();
    let own = std::fs::metadata("/proc/self/ns/net")
        .context("cannot stat /proc/self/ns/net (is /proc mounted?)")?;
    let own_inode = u32::try_from(own.ino()).context("netns inode does not fit in 32 bits")?;
    found.insert(
        own_inode,
        NetnsRef {
            inode: own_inode,
            name: None,
            path: PathBuf::from(format!("/proc/{}/ns/net", std::process::id())),
        },
    );

    // Lowest pid first, so the path chosen for a namespace is stable between runs.
    for pid in pids().context("cannot list /proc")? {
        if let Some(inode) = netns_of_pid(pid) {
            found.entry(inode).or_insert_with(|| NetnsRef {
                inode,
                name: None,
                path: PathBuf::from(format!("/proc/{pid}/ns/net")),
            });
        }
    }

    // Named namespaces are nsfs bind mounts; a stale entry (mount gone) is a plain
    // empty file on the tmpfs, told apart by its device.
    match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(dir) => {
            let mut named: Vec<(String, PathBuf)> = dir
                .filter_map(|e| {
                    let e = e.ok()?;
                    Some((e.file_name().into_string().ok()?, e.path()))
                })
                .collect();
            named.sort();
            for (name, path) in named {
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let Ok(inode) = u32::try_from(meta.ino()) else {
                    continue;
                };
                if meta.dev() != own.dev() {
                    continue;
                }
                let entry = found.entry(inode).or_insert_with(|| NetnsRef {
                    inode,
                    name: None,
                    path: path.clone(),
                });
                // The first name in sorted order wins when one namespace has several.
                if entry.name.is_none() {
                    entry.name = Some(name);
                    entry.path = path;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot list {NETNS_RUN_DIR}")),
    }
    Ok(found.into_values().collect())
}

/// One TCP socket as `sock_diag` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub state: TcpState,
    /// A timewait socket (`struct inet_timewait_sock`, the kernel's TIME_WAIT timer):
    /// state TIME_WAIT, or FIN_WAIT2 after an orphaned close (the client closed first
    /// and the peer has not closed yet; it lives `tcp_fin_timeout`). Not a full socket.
    /// https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/inet_diag.c (inet_twsk_diag_fill)
    pub timewait: bool,
    /// 0 for TIME_WAIT and orphans (no `struct socket` left).
    pub inode: u64,
    pub uid: u32,
    /// `sock_gen_cookie()`: unique for the namespace's lifetime.
    pub cookie: u64,
    /// Remaining time of the socket's active timer, from `idiag_expires` (ms); for
    /// TIME_WAIT, the time left before it is freed.
    pub expires_ms: u32,
    /// Listeners: connections waiting in the accept queue; others: unread bytes.
    pub recv_queue: u32,
    /// Listeners: the accept backlog (after the somaxconn cap); others: unsent bytes.
    pub send_queue: u32,
}

/// Byte offset of `idiag_expires` in `struct inet_diag_msg` (4 single bytes, then the
/// 48-byte `inet_diag_sockid`). Read directly because netlink-packet-sock-diag 0.5
/// drops it for TIME_WAIT (its `Timer::TimeWait` has no duration), which is the
/// one case we need it.
const IDIAG_EXPIRES_OFFSET: usize = 52;

/// Maps the payload of one `SOCK_DIAG_BY_FAMILY` response (a `struct inet_diag_msg`
/// followed by attributes, which are ignored). `Ok(None)` for what a TCP dump should
/// not contain: another family, or a state outside `tcp_states.h`. Allocation-free.
fn diag_socket_from_payload(payload: &[u8]) -> Result<Option<DiagSocket>> {
    let h = InetResponseHeader::parse(payload).map_err(|e| anyhow!("bad inet_diag_msg: {e}"))?;
    let family = match h.family {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
        _ => return Ok(None),
    };
    let Some(state) = TcpState::from_u8(h.state) else {
        return Ok(None);
    };
    // `parse` has checked the length covers the whole fixed header.
    let expires: [u8; 4] = payload[IDIAG_EXPIRES_OFFSET..IDIAG_EXPIRES_OFFSET + 4]
        .try_into()
        .expect("4-byte slice");
    // idiag_cookie is two host-order u32s, low word first (sock_diag_save_cookie).
    let c = h.socket_id.cookie;
    let cookie = u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        | u64::from(u32::from_ne_bytes([c[4], c[5], c[6], c[7]])) << 32;
    Ok(Some(DiagSocket {
        family,
        saddr: h.socket_id.source_address,
        sport: h.socket_id.source_port,
        daddr: h.socket_id.destination_address,
        dport: h.socket_id.destination_port,
        state,
        timewait: matches!(h.timer, Some(Timer::TimeWait)),
        inode: u64::from(h.inode),
        uid: h.uid,
        cookie,
        expires_ms: u32::from_ne_bytes(expires),
        recv_queue: h.recv_queue,
        send_queue: h.send_queue,
    }))
}

/// A `SOCK_DIAG_BY_FAMILY` dump request (`struct inet_diag_req_v2`) for all TCP
/// sockets of `family` in `states`, no extensions (they would only make the
/// responses bigger).
fn build_dump_request(family: u8, states: u32, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            // The crate's flags stop at CLOSING; keep NEW_SYN_RECV's bit as given.
            states: StateFlags::from_bits_retain(states),
            socket_id: if family == AF_INET6 {
                SocketId::new_v6()
            } else {
                SocketId::new_v4()
            },
        })
        .into(),
    );
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// `TCPDIAG_GETSOCK`, the original inet_diag request type.
const TCPDIAG_GETSOCK: u16 = 18;
const NLM_F_REQUEST_DUMP: u16 = 0x0001 | 0x0300;

/// A legacy `TCPDIAG_GETSOCK` dump request (`struct inet_diag_req`): the kernel
/// serves it with `sdiag_family = AF_UNSPEC`, i.e. IPv4 and IPv6 in one walk of the
/// TCP hash tables, where `SOCK_DIAG_BY_FAMILY` needs one walk per family
/// (inet_diag_dump_compat() in
/// <https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/inet_diag.c>). `ss` uses it too.
fn build_compat_dump_request(states: u32, seq: u32) -> Vec<u8> {
    // nlmsghdr (16) + inet_diag_req: family, src_len, dst_len, ext (4), sockid (48),
    // states (4), dbs (4).
    const LEN: usize = 16 + 4 + 48 + 4 + 4;
    let mut buf = Vec::with_capacity(LEN);
    buf.extend_from_slice(&(LEN as u32).to_ne_bytes());
    buf.extend_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    buf.extend_from_slice(&NLM_F_REQUEST_DUMP.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[AF_INET, 0, 0, 0]);
    buf.extend_from_slice(&[0; 48]);
    buf.extend_from_slice(&states.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf
}

/// Consumes one datagram of a dump reply: pushes the sockets, and returns whether
/// the dump has ended (`NLMSG_DONE` or `NLMSG_ERROR` for `seq`). A message that
/// fails to decode does not stop the reading (the rest of the dump must still be
/// drained for the socket to be reusable): its error is kept in `first_err`, as is
/// an error the kernel reports.
fn parse_dump_chunk(
    mut buf: &[u8],
    seq: u32,
    out: &mut Vec<DiagSocket>,
    first_err: &mut Option<anyhow::Error>,
) -> bool {
    while !buf.is_empty() {
        let msg = match NetlinkBuffer::new_checked(buf) {
            Ok(m) => m,
            Err(e) => {
                // Framing is lost for the rest of this datagram only.
                first_err.get_or_insert_with(|| anyhow!("bad netlink message: {e}"));
                return false;
            }
        };
        let len = msg.length() as usize;
        // NLMSG_ALIGN; new_checked guarantees len >= header size, so this advances.
        buf = buf.get((len + 3) & !3..).unwrap_or_default();
        if msg.sequence_number() != seq {
            // Left over from an earlier request on this socket.
            continue;
        }
        let payload = msg.payload();
        match msg.message_type() {
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => match diag_socket_from_payload(payload) {
                Ok(Some(s)) => out.push(s),
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            },
            NLMSG_DONE => {
                // A dump ends with the callback's return value as an int: negative
                // errno when it failed part-way (netlink_dump_done() in
                // https://elixir.bootlin.com/linux/v6.12/source/net/netlink/af_netlink.c).
                let code = payload
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                if code < 0 {
                    first_err.get_or_insert_with(|| {
                        anyhow!(io::Error::from_raw_os_error(-code)).context("dump ended with")
                    });
                }
                return true;
            }
            NLMSG_ERROR => {
                let code = ErrorBuffer::new_checked(payload)
                    .ok()
                    .and_then(|b| b.code())
                    .map_or(0, |c| c.get());
                if code != 0 {
                    first_err.get_or_insert_with(|| {
                        anyhow!(io::Error::from_raw_os_error(-code)).context("kernel refused")
                    });
                }
                return true;
            }
            NLMSG_OVERRUN => {
                first_err.get_or_insert_with(|| anyhow!("netlink overrun"));
            }
            NLMSG_NOOP => {}
            other => {
                first_err.get_or_insert_with(|| anyhow!("unexpected netlink message type {other}"));
            }
        }
    }
    false
}

/// Parses `ip_local_port_range` ("32768\t60999\n").
fn parse_port_range(s: &str) -> Result<(u16, u16)> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) => Ok((lo, hi)),
        _ => bail!("malformed port range {s:?}"),
    }
}

/// Parses `ip_local_reserved_ports` ("", "8080", "1,2-5,8080\n") into inclusive ranges.
fn parse_reserved_ports(s: &str) -> Result<Vec<(u16, u16)>> {
    s.trim()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (lo, hi) = p.split_once('-').unwrap_or((p, p));
            let lo: u16 = lo
                .trim()
                .parse()
                .with_context(|| format!("bad port in {p:?}"))?;
            let hi: u16 = hi
                .trim()
                .parse()
                .with_context(|| format!("bad port in {p:?}"))?;
            if lo > hi {
                bail!("reversed range {p:?}");
            }
            Ok((lo, hi))
        })
        .collect()
}

/// Reads a whole sysctl from offset 0. One read must get it all: bitmap sysctls
/// such as `ip_local_reserved_ports` return nothing at a non-zero offset
/// (proc_do_large_bitmap() in
/// <https://elixir.bootlin.com/linux/v6.12/source/kernel/sysctl.c>), so a full
/// buffer means "retry bigger", not "read on".
fn read_sysctl(file: &File) -> io::Result<String> {
    // Worst case, every other port reserved: ~190 KB of text.
    const MAX: usize = 1 << 20;
    let mut buf = vec![0u8; 256];
    loop {
        let n = file.read_at(&mut buf, 0)?;
        if n < buf.len() || buf.len() >= MAX {
            buf.truncate(n);
            return String::from_utf8(buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        }
        buf.resize(buf.len() * 4, 0);
    }
}

const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The per-namespace handles, opened in whatever netns is current for the thread.
struct Handles {
    sock: Socket,
    port_range: File,
    reserved_ports: File,
    /// `tcp_tw_reuse`, `tcp_fin_timeout`, `tcp_max_tw_buckets`: recorded for the
    /// reader of a capture; a kernel without one leaves it `None`.
    tcp: [Option<File>; 3],
}

const TCP_SYSCTLS: [&str; 3] = [
    "/proc/sys/net/ipv4/tcp_tw_reuse",
    "/proc/sys/net/ipv4/tcp_fin_timeout",
    "/proc/sys/net/ipv4/tcp_max_tw_buckets",
];

impl Handles {
    fn open_here() -> Result<Self> {
        let mut sock =
            Socket::new(NETLINK_SOCK_DIAG).context("cannot open a NETLINK_SOCK_DIAG socket")?;
        sock.bind_auto()
            .context("cannot bind the sock_diag socket")?;
        // Only the kernel (port 0) may answer.
        sock.connect(&SocketAddr::new(0, 0))
            .context("cannot connect the sock_diag socket")?;
        let port_range =
            File::open(PORT_RANGE).with_context(|| format!("cannot open {PORT_RANGE}"))?;
        let reserved_ports =
            File::open(RESERVED_PORTS).with_context(|| format!("cannot open {RESERVED_PORTS}"))?;
        Ok(Self {
            sock,
            port_range,
            reserved_ports,
            tcp: TCP_SYSCTLS.map(|p| File::open(p).ok()),
        })
    }
}

fn thread_netns_inode() -> Result<u32> {
    let meta = std::fs::metadata("/proc/thread-self/ns/net")
        .context("cannot stat /proc/thread-self/ns/net")?;
    u32::try_from(meta.ino()).context("netns inode does not fit in 32 bits")
}

/// Runs `f` inside namespace `ns`, on a short-lived thread that joins it (a `setns`
/// only moves the calling thread; /proc/sys and new sockets follow the thread's
/// namespace). Needs CAP_SYS_ADMIN.
pub fn in_netns<T: Send>(ns: &NetnsRef, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let nsfile =
        File::open(&ns.path).with_context(|| format!("{ns}: cannot open {}", ns.path.display()))?;
    in_netns_file(&nsfile, ns.inode, f)
}

fn in_netns_file<T: Send>(
    nsfile: &File,
    inode: u32,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("portx-setns".into())
            .spawn_scoped(s, || -> Result<T> {
                // SAFETY: plain syscall on an fd we own; affects this thread only.
                if unsafe { libc::setns(nsfile.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error()).context("setns(CLONE_NEWNET) failed");
                }
                let now = thread_netns_inode()?;
                if now != inode {
                    bail!("setns landed in netns {now}");
                }
                f()
            })
            .context("cannot spawn the setns thread")?
            .join()
            .map_err(|_| anyhow!("the setns thread panicked"))?
    })
}

/// Handles to inspect one network namespace, opened once.
///
/// `Send` but not `Sync`: two dumps on one netlink socket at once would interleave.
pub struct NetnsProbe {
    pub inode: u32,
    label: String,
    handles: Handles,
    seq: Cell<u32>,
    /// Size of the last dump, to size the next one's Vec at once.
    last_len: Cell<usize>,
    /// The kernel refused the one-walk legacy request; use one request per family.
    no_compat: Cell<bool>,
}

impl fmt::Debug for NetnsProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetnsProbe")
            .field("inode", &self.inode)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// Large enough for any one dump datagram: the kernel sizes them from the reader's
/// buffer but caps them at 32 KiB (netlink_recvmsg()/netlink_dump() in
/// <https://elixir.bootlin.com/linux/v6.12/source/net/netlink/af_netlink.c>).
const RECV_BUF_LEN: usize = 64 * 1024;

impl NetnsProbe {
    fn new(inode: u32, label: String, handles: Handles) -> Self {
        Self {
            inode,
            label,
            handles,
            seq: Cell::new(0),
            last_len: Cell::new(0),
            no_compat: Cell::new(false),
        }
    }

    /// Opens the handles inside `ns` (see [`in_netns`]). Needs CAP_SYS_ADMIN.
    pub fn open(ns: &NetnsRef) -> Result<Self> {
        let label = ns.to_string();
        let nsfile = File::open(&ns.path)
            .with_context(|| format!("{label}: cannot open {}", ns.path.display()))?;
        let inode = nsfile.metadata().map(|m| m.ino()).unwrap_or(0);
        if inode != u64::from(ns.inode) {
            // e.g. the process behind /proc/PID exited and the pid was reused.
            bail!("{label}: {} now refers to netns {inode}", ns.path.display());
        }
        let handles = in_netns_file(&nsfile, ns.inode, Handles::open_here)
            .with_context(|| format!("{label}: cannot open probe handles"))?;
        Ok(Self::new(ns.inode, label, handles))
    }

    /// Opens the handles in the calling thread's own namespace (no setns).
    pub fn open_current() -> Result<Self> {
        let inode = thread_netns_inode()?;
        let label = format!("netns {inode} (current)");
        let handles =
            Handles::open_here().with_context(|| format!("{label}: cannot open probe handles"))?;
        Ok(Self::new(inode, label, handles))
    }

    fn next_seq(&self) -> u32 {
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        seq
    }

    /// All TCP sockets (IPv4 and IPv6) whose state bit is set in `states`
    /// ([`ALL_STATES`], [`TIME_WAIT_ONLY`], [`states_mask`]). Bits outside
    /// [`ALL_STATES`] are ignored. Asking for SYN_RECV also returns pending
    /// connection requests (the kernel adds NEW_SYN_RECV, and reports them as SYN_RECV).
    pub fn dump_tcp(&self, states: u32) -> Result<Vec<DiagSocket>> {
        let states = states & ALL_STATES;
        let mut out = Vec::with_capacity(self.last_len.get() + self.last_len.get() / 8);
        if states == 0 {
            return Ok(out);
        }
        let mut buf = vec![0u8; RECV_BUF_LEN];
        if !self.no_compat.get() {
            let seq = self.next_seq();
            match self.dump(
                &build_compat_dump_request(states, seq),
                seq,
                &mut buf,
                &mut out,
            ) {
                Ok(()) => {
                    self.last_len.set(out.len());
                    return Ok(out);
                }
                // A kernel without the legacy request: ask per family from now on.
                Err(_) => {
                    self.no_compat.set(true);
                    out.clear();
                }
            }
        }
        for (family, name) in [(AF_INET, "AF_INET"), (AF_INET6, "AF_INET6")] {
            let seq = self.next_seq();
            self.dump(
                &build_dump_request(family, states, seq),
                seq,
                &mut buf,
                &mut out,
            )
            .with_context(|| format!("{}: sock_diag dump of {name} TCP sockets", self.label))?;
        }
        self.last_len.set(out.len());
        Ok(out)
    }

    /// Sends one dump request and reads its reply to the end.
    fn dump(&self, req: &[u8], seq: u32, buf: &mut [u8], out: &mut Vec<DiagSocket>) -> Result<()> {
        self.handles.sock.send(req, 0).context("send")?;
        let mut first_err = None;
        // Bounded by the kernel: every dump ends with NLMSG_DONE or NLMSG_ERROR.
        loop {
            let n = loop {
                let mut b = &mut buf[..];
                // MSG_TRUNC: return the real datagram size, to detect a short buffer.
                match self.handles.sock.recv(&mut b, libc::MSG_TRUNC) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r.context("recv")?,
                }
            };
            if n > buf.len() {
                // Cannot happen with the 32 KiB kernel cap; would lose sockets.
                first_err.get_or_insert_with(|| anyhow!("netlink datagram of {n} bytes truncated"));
                continue;
            }
            if parse_dump_chunk(&buf[..n], seq, out, &mut first_err) {
                return first_err.map_or(Ok(()), Err);
            }
        }
    }

    /// `net.ipv4.ip_local_port_range` of this namespace.
    pub fn port_range(&self) -> Result<(u16, u16)> {
        read_sysctl(&self.handles.port_range)
            .map_err(anyhow::Error::from)
            .and_then(|s| parse_port_range(&s))
            .with_context(|| format!("{}: reading {PORT_RANGE}", self.label))
    }

    /// This namespace's TIME_WAIT-related settings; unreadable ones are `None`.
    pub fn tcp_sysctls(&self) -> crate::model::TcpSysctls {
        let [tw_reuse, fin_timeout, max_tw_buckets] = self.handles.tcp.each_ref().map(|f| {
            f.as_ref()
                .and_then(|f| read_sysctl(f).ok())
                .and_then(|s| s.trim().parse().ok())
        });
        crate::model::TcpSysctls {
            tw_reuse,
            fin_timeout,
            max_tw_buckets,
        }
    }

    /// `net.ipv4.ip_local_reserved_ports` of this namespace, as inclusive ranges.
    pub fn reserved_ports(&self) -> Result<Vec<(u16, u16)>> {
        read_sysctl(&self.handles.reserved_ports)
            .map_err(anyhow::Error::from)
            .and_then(|s| parse_reserved_ports(&s))
            .with_context(|| format!("{}: reading {RESERVED_PORTS}", self.label))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        collections::BTreeSet,
        net::{Ipv6Addr, SocketAddr as InetAddr, TcpListener, TcpStream},
        os::fd::AsFd,
        path::Path,
        process::Command,
        time::Duration,
    };

    use super::*;

    #[test]
    fn parses_reserved_ports() {
        assert_eq!(parse_reserved_ports("").unwrap(), vec![]);
        assert_eq!(parse_reserved_ports("\n").unwrap(), vec![]);
        assert_eq!(parse_reserved_ports("8080").unwrap(), vec![(8080, 8080)]);
        assert_eq!(
            parse_reserved_ports("1,2-5,8080").unwrap(),
            vec![(1, 1), (2, 5), (8080, 8080)]
        );
        assert_eq!(
            parse_reserved_ports(" 1, 2 - 5 ,8080\n").unwrap(),
            vec![(1, 1), (2, 5), (8080, 8080)]
        );
        assert!(parse_reserved_ports("5-2").is_err());
        assert!(parse_reserved_ports("70000").is_err());
        assert!(parse_reserved_ports("x").is_err());
    }

    #[test]
    fn parses_port_range() {
        assert_eq!(parse_port_range("32768\t60999\n").unwrap(), (32768, 60999));
        assert!(parse_port_range("32768").is_err());
        assert!(parse_port_range("1 2 3").is_err());
    }

    #[test]
    fn states_masks() {
        assert_eq!(TIME_WAIT_ONLY, 1 << 6);
        let all: Vec<_> = (0..=255).filter_map(TcpState::from_u8).collect();
        assert_eq!(all.len(), 12);
        assert_eq!(states_mask(all), ALL_STATES);
        assert_eq!(
            states_mask([TcpState::Listen, TcpState::Established]),
            (1 << 10) | (1 << 1)
        );
        assert_eq!(states_mask([]), 0);
    }

    #[test]
    fn parses_ns_links() {
        assert_eq!(parse_ns_link(b"net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link(b"mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link(b"net:[]"), None);
        assert_eq!(parse_ns_link(b"net:[99999999999]"), None);
    }

    #[test]
    fn builds_a_dump_request() {
        let req = build_dump_request(AF_INET6, ALL_STATES, 7);
        // nlmsghdr (16) + inet_diag_req_v2 (56)
        assert_eq!(req.len(), 72);
        let msg = NetlinkBuffer::new_checked(&req[..]).unwrap();
        assert_eq!(msg.message_type(), SOCK_DIAG_BY_FAMILY);
        assert_eq!(msg.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(msg.sequence_number(), 7);
        let p = msg.payload();
        assert_eq!((p[0], p[1]), (AF_INET6, IPPROTO_TCP));
        assert_eq!(u32::from_ne_bytes(p[4..8].try_into().unwrap()), ALL_STATES);
    }

    /// A hand-built `struct inet_diag_msg` plus one attribute (INET_DIAG_SHUTDOWN); its
    /// timer is the TIME_WAIT one (3).
    #[expect(clippy::too_many_arguments, reason = "mirrors the C struct's fields")]
    fn diag_msg(
        family: u8,
        state: u8,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        cookie: u64,
        expires: u32,
        uid: u32,
        inode: u32,
    ) -> Vec<u8> {
        let mut m = vec![family, state, 3, 0];
        m.extend(sport.to_be_bytes());
        m.extend(dport.to_be_bytes());
        m.extend(crate::model::ip_bytes(src));
        m.extend(crate::model::ip_bytes(dst));
        m.extend(0u32.to_ne_bytes()); // if
        m.extend((cookie as u32).to_ne_bytes());
        m.extend(((cookie >> 32) as u32).to_ne_bytes());
        for v in [expires, 0, 0, uid, inode] {
            m.extend(v.to_ne_bytes());
        }
        assert_eq!(m.len(), 72);
        // nla: len 5, type 8 (INET_DIAG_SHUTDOWN), value, padding
        m.extend([5, 0, 8, 0, 0, 0, 0, 0]);
        m
    }

    fn nlmsg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::with_capacity(len + 3);
        m.extend((len as u32).to_ne_bytes());
        m.extend(ty.to_ne_bytes());
        m.extend(flags.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(payload);
        m.resize((len + 3) & !3, 0);
        m
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn maps_a_diag_message() {
        let p = diag_msg(
            AF_INET,
            6,
            v4("127.0.0.1"),
            20001,
            v4("127.0.0.2"),
            80,
            0x1122_3344_5566_7788,
            59_000,
            0,
            0,
        );
        let s = diag_socket_from_payload(&p).unwrap().unwrap();
        assert_eq!(
            s,
            DiagSocket {
                family: Family::Ipv4,
                saddr: v4("127.0.0.1"),
                sport: 20001,
                daddr: v4("127.0.0.2"),
                dport: 80,
                state: TcpState::TimeWait,
                timewait: true,
                inode: 0,
                uid: 0,
                cookie: 0x1122_3344_5566_7788,
                expires_ms: 59_000,
                recv_queue: 0,
                send_queue: 0,
            }
        );
        let p = diag_msg(
            AF_INET6,
            10,
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            443,
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            0,
            1,
            0,
            1000,
            123_456,
        );
        let s = diag_socket_from_payload(&p).unwrap().unwrap();
        assert_eq!(
            (s.family, s.state, s.inode, s.uid),
            (Family::Ipv6, TcpState::Listen, 123_456, 1000)
        );
        assert_eq!(s.saddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        // FIN_WAIT2: a timewait socket (idiag_timer 3) after an orphaned close, or a
        // full socket (here its keepalive timer, 2).
        let mut p = diag_msg(
            AF_INET,
            5,
            v4("127.0.0.1"),
            1,
            v4("127.0.0.1"),
            2,
            0,
            0,
            0,
            0,
        );
        let tw = diag_socket_from_payload(&p).unwrap().unwrap();
        p[2] = 2;
        let full = diag_socket_from_payload(&p).unwrap().unwrap();
        assert_eq!(
            (tw.state, tw.timewait, full.state, full.timewait),
            (TcpState::FinWait2, true, TcpState::FinWait2, false)
        );
        // Unknown states (e.g. 13, TCP_BOUND_INACTIVE) and families are skipped.
        let p = diag_msg(AF_INET, 13, v4("0.0.0.0"), 1, v4("0.0.0.0"), 0, 0, 0, 0, 1);
        assert_eq!(diag_socket_from_payload(&p).unwrap(), None);
        assert!(diag_socket_from_payload(&p[..40]).is_err());
    }

    #[test]
    fn parses_a_multipart_dump() {
        const MULTI: u16 = netlink_packet_core::NLM_F_MULTIPART;
        let a = diag_msg(
            AF_INET,
            1,
            v4("127.0.0.1"),
            1,
            v4("127.0.0.1"),
            2,
            5,
            0,
            0,
            10,
        );
        let b = diag_msg(
            AF_INET,
            10,
            v4("127.0.0.1"),
            2,
            v4("0.0.0.0"),
            0,
            6,
            0,
            0,
            11,
        );
        let mut chunk = nlmsg(SOCK_DIAG_BY_FAMILY, MULTI, 9, &a);
        chunk.extend(nlmsg(SOCK_DIAG_BY_FAMILY, MULTI, 8, &a)); // stale: skipped
        chunk.extend(nlmsg(NLMSG_NOOP, 0, 9, &[]));
        chunk.extend(nlmsg(SOCK_DIAG_BY_FAMILY, MULTI, 9, &b));
        let (mut out, mut err) = (Vec::new(), None);
        assert!(!parse_dump_chunk(&chunk, 9, &mut out, &mut err));
        assert_eq!(out.len(), 2);
        assert!(err.is_none());
        let mut done = nlmsg(SOCK_DIAG_BY_FAMILY, MULTI, 9, &a);
        done.extend(nlmsg(NLMSG_DONE, MULTI, 9, &0i32.to_ne_bytes()));
        assert!(parse_dump_chunk(&done, 9, &mut out, &mut err));
        assert_eq!(
            out.iter().map(|s| s.inode).collect::<Vec<_>>(),
            [10, 11, 10]
        );
        assert!(err.is_none());

        // A failed dump and a refused request end it with an error.
        let failed = nlmsg(NLMSG_DONE, MULTI, 9, &(-libc::EINTR).to_ne_bytes());
        assert!(parse_dump_chunk(&failed, 9, &mut out, &mut err));
        assert!(
            format!("{:#}", err.take().unwrap())
                .to_lowercase()
                .contains("interrupted")
        );
        let mut e = (-libc::EPERM).to_ne_bytes().to_vec();
        e.extend(&build_dump_request(AF_INET, 2, 9)[..16]);
        assert!(parse_dump_chunk(
            &nlmsg(NLMSG_ERROR, 0, 9, &e),
            9,
            &mut out,
            &mut err
        ));
        assert!(
            format!("{:#}", err.take().unwrap())
                .to_lowercase()
                .contains("not permitted")
        );
        // A bad message is reported but does not end the dump.
        let bad = nlmsg(SOCK_DIAG_BY_FAMILY, MULTI, 9, &a[..20]);
        assert!(!parse_dump_chunk(&bad, 9, &mut out, &mut err));
        assert!(err.is_some());
    }

    #[test]
    fn lists_own_netns_and_dumps_it() {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let all = list_netns().unwrap();
        assert!(all.iter().any(|n| n.inode == own), "{all:?}");
        assert!(all.windows(2).all(|w| w[0].inode < w[1].inode));

        // sock_diag dumps and these sysctls need no privilege.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = NetnsProbe::open_current().unwrap();
        assert_eq!(probe.inode, own);
        let dump = probe.dump_tcp(ALL_STATES).unwrap();
        let me = dump
            .iter()
            .find(|s| s.sport == port && s.state == TcpState::Listen)
            .unwrap_or_else(|| panic!("listener on {port} missing from {dump:?}"));
        assert_eq!(me.inode, socket_inode(listener.as_fd()));
        assert_eq!(me.saddr, v4("127.0.0.1"));
        assert!(
            probe
                .dump_tcp(TIME_WAIT_ONLY)
                .unwrap()
                .iter()
                .all(|s| s.state == TcpState::TimeWait)
        );
        let host = parse_port_range(&std::fs::read_to_string(PORT_RANGE).unwrap()).unwrap();
        assert_eq!(probe.port_range().unwrap(), host);
        probe.reserved_ports().unwrap();
    }

    pub(crate) fn socket_inode(fd: std::os::fd::BorrowedFd<'_>) -> u64 {
        File::from(fd.try_clone_to_owned().unwrap())
            .metadata()
            .unwrap()
            .ino()
    }

    // ---- root only ----

    fn is_root() -> bool {
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn run(args: &[&str]) -> String {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A named namespace, deleted on drop (also when the test fails).
    struct TestNetns(String);

    impl TestNetns {
        fn new(tag: &str) -> Self {
            let name = format!("portx-{tag}-{}", std::process::id());
            // Leftover from an aborted run with the same pid.
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            run(&["ip", "netns", "add", &name]);
            let ns = Self(name);
            run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
            ns
        }

        fn sh(&self, script: &str) -> String {
            run(&["ip", "netns", "exec", &self.0, "sh", "-c", script])
        }

        fn path(&self) -> PathBuf {
            Path::new(NETNS_RUN_DIR).join(&self.0)
        }

        /// Runs `f` in a thread that has joined the namespace.
        fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
            let file = File::open(self.path()).unwrap();
            std::thread::scope(|s| {
                s.spawn(|| {
                    // SAFETY: plain syscall; affects this thread only.
                    assert_eq!(
                        unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                        0
                    );
                    f()
                })
                .join()
                .unwrap()
            })
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    type Key = (String, InetAddr, InetAddr);

    /// ss's state names (`sstate_name` in iproute2's misc/ss.c).
    fn ss_state(s: TcpState) -> &'static str {
        match s {
            TcpState::Established => "ESTAB",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv | TcpState::NewSynRecv => "SYN-RECV",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Close => "UNCONN",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
        }
    }

    /// "127.0.0.1:80", "[::1]:80", "0.0.0.0:*", "[::]:*", "*:80" (v6 wildcard).
    fn ss_addr(s: &str) -> InetAddr {
        let (host, port) = s.rsplit_once(':').unwrap();
        let port = if port == "*" {
            0
        } else {
            port.parse().unwrap()
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = if host == "*" {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            host.parse().unwrap()
        };
        InetAddr::new(ip, port)
    }

    fn ss_keys(ns: &TestNetns) -> BTreeSet<Key> {
        ns.sh("ss -tanH")
            .lines()
            .map(|l| {
                let f: Vec<_> = l.split_whitespace().collect();
                (f[0].to_owned(), ss_addr(f[3]), ss_addr(f[4]))
            })
            .collect()
    }

    fn diag_keys(dump: &[DiagSocket]) -> BTreeSet<Key> {
        dump.iter()
            .map(|s| {
                (
                    ss_state(s.state).to_owned(),
                    InetAddr::new(s.saddr, s.sport),
                    InetAddr::new(s.daddr, s.dport),
                )
            })
            .collect()
    }

    #[test]
    fn probes_a_test_namespace() {
        if !is_root() {
            eprintln!("skipping test - needs root");
            return;
        }
        let ns = TestNetns::new("diag");
        ns.sh("echo '20000 20010' > /proc/sys/net/ipv4/ip_local_port_range");
        let host_range = parse_port_range(&std::fs::read_to_string(PORT_RANGE).unwrap()).unwrap();
        assert_ne!(host_range, (20000, 20010));

        // Listeners on both families, three connections, one of them closed by the
        // client first so that the client side goes TIME_WAIT.
        let (l4, l6, kept, tw_port) = ns.within(|| {
            let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
            let l6 = TcpListener::bind("[::1]:0").unwrap();
            let mut kept = Vec::new();
            for l in [&l4, &l4, &l6] {
                let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
                let (s, _) = l.accept().unwrap();
                kept.push((c, s));
            }
            let (c, s) = kept.remove(0);
            let tw_port = c.local_addr().unwrap().port();
            drop(c);
            drop(s);
            (l4, l6, kept, tw_port)
        });

        let all = list_netns().unwrap();
        let me = all
            .iter()
            .find(|n| n.name.as_deref() == Some(ns.0.as_str()))
            .unwrap_or_else(|| panic!("{} not in {all:?}", ns.0));
        assert_eq!(
            u64::from(me.inode),
            std::fs::metadata(ns.path()).unwrap().ino()
        );
        assert_eq!(me.path, ns.path());

        let probe = NetnsProbe::open(me).unwrap();
        assert_eq!(probe.inode, me.inode);
        let host = NetnsProbe::open_current().unwrap();
        assert_ne!(host.inode, probe.inode);
        // Read from this (host) thread: the files opened in the namespace keep
        // reading it, and pread at 0 sees later changes.
        assert_eq!(probe.port_range().unwrap(), (20000, 20010));
        assert_eq!(host.port_range().unwrap(), host_range);
        assert_eq!(probe.reserved_ports().unwrap(), vec![]);
        ns.sh("echo '20000 20020' > /proc/sys/net/ipv4/ip_local_port_range; echo 20100-20102,30000 > /proc/sys/net/ipv4/ip_local_reserved_ports");
        assert_eq!(probe.port_range().unwrap(), (20000, 20020));
        assert_eq!(
            probe.reserved_ports().unwrap(),
            vec![(20100, 20102), (30000, 30000)]
        );
        assert_eq!(host.port_range().unwrap(), host_range);

        // Our dump must list exactly what ss lists. Both are snapshots; retry while
        // the closing connection is still settling (LAST_ACK, FIN_WAIT).
        let mut last = None;
        for _ in 0..50 {
            let dump = probe.dump_tcp(ALL_STATES).unwrap();
            let (ours, theirs) = (diag_keys(&dump), ss_keys(&ns));
            let settled = dump.iter().any(|s| s.state == TcpState::TimeWait)
                && dump.iter().all(|s| {
                    matches!(
                        s.state,
                        TcpState::TimeWait | TcpState::Listen | TcpState::Established
                    )
                });
            if settled && ours == theirs {
                last = Some(dump);
                break;
            }
            last = None;
            eprintln!("not settled yet:\n ours {ours:?}\n ss   {theirs:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let dump = last.expect("dump never matched ss -tanH");
        assert_eq!(dump.len(), 2 + 2 * kept.len() + 1, "{dump:#?}");

        let tw: Vec<_> = dump
            .iter()
            .filter(|s| s.state == TcpState::TimeWait)
            .collect();
        assert_eq!(tw.len(), 1);
        assert_eq!((tw[0].sport, tw[0].inode), (tw_port, 0));
        assert!(
            tw[0].expires_ms > 0 && tw[0].expires_ms <= 60_000,
            "{:?}",
            tw[0]
        );
        assert!(tw[0].cookie != 0);
        let only_tw = probe.dump_tcp(TIME_WAIT_ONLY).unwrap();
        assert_eq!(only_tw.len(), 1);
        assert_eq!(only_tw[0].cookie, tw[0].cookie);

        let l4_inode = socket_inode(l4.as_fd());
        let listen4 = dump
            .iter()
            .find(|s| s.state == TcpState::Listen && s.family == Family::Ipv4)
            .unwrap();
        assert_eq!(listen4.inode, l4_inode);
        assert_eq!(listen4.sport, l4.local_addr().unwrap().port());
        assert!((20000..=20010).contains(&listen4.sport));
        let listen6 = dump
            .iter()
            .find(|s| s.state == TcpState::Listen && s.family == Family::Ipv6)
            .unwrap();
        assert_eq!(listen6.inode, socket_inode(l6.as_fd()));
        assert_eq!(listen6.daddr, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let cookies: BTreeSet<_> = dump.iter().map(|s| s.cookie).collect();
        assert_eq!(cookies.len(), dump.len());
        // The host's dump does not see the namespace's sockets.
        assert!(
            host.dump_tcp(ALL_STATES)
                .unwrap()
                .iter()
                .all(|s| s.inode != l4_inode)
        );

        let owners = crate::kernel::proc_owners::socket_owners(None);
        let owner = owners.get(&l4_inode).expect("listener has no owner");
        assert_eq!(owner.pid, std::process::id());
        let established = dump.iter().filter(|s| s.state == TcpState::Established);
        for s in established {
            assert_eq!(owners[&s.inode].pid, std::process::id());
        }
        // Once unnamed, the namespace lives on through its sockets and the probe.
        drop(ns);
        let after = probe.dump_tcp(ALL_STATES).unwrap();
        assert!(after.iter().any(|s| s.inode == l4_inode));
        drop((kept, l6));
    }
}
