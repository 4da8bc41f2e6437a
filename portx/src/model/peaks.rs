//! Peak tracking: per destination, the highest `used` ever reached, when, who held
//! the ports at that moment, and how many of them were in TIME_WAIT. `portx report`
//! needs it (the moment of exhaustion is usually gone by the end of a recording);
//! `portx top` can leave it off, where it costs one branch per port taken.
//!
//! The model calls [`Model::note_used_increase`] where a destination's `used` grows;
//! only a new maximum does any work (resolving the few top owners), so a steady state
//! or a shrinking destination costs a hash lookup at most. Peaks are keyed by the
//! destination itself, not the model's row index, because rows of emptied
//! destinations are recycled and a peak must outlive its row.

use std::net::IpAddr;

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::{DestKey, Model, TcpState, Tuple, ip_bytes, snapshot::OwnerPorts};

/// Owners kept per peak: who held most of the ports, not everyone.
pub const PEAK_OWNERS: usize = 5;

/// The bookkeeping the model carries (empty and unused while off).
#[derive(Default)]
pub(super) struct Peaks {
    on: bool,
    by_dest: FxHashMap<DestKey, DestPeakAgg>,
}

struct DestPeakAgg {
    used: u32,
    at_ns: u64,
    capacity: u32,
    time_wait: u32,
    owners: Vec<OwnerPorts>,
}

/// The highest use of one destination's source ports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestPeak {
    pub netns: u32,
    pub saddr: String,
    pub daddr: String,
    pub dport: u16,
    /// The namespace's capacity when the peak was reached.
    pub capacity: u32,
    pub used: u32,
    /// Boot-time clock of the event that reached it (the first time it was reached).
    pub at_ns: u64,
    /// The top [`PEAK_OWNERS`] holders at that moment, most ports first.
    pub owners: Vec<OwnerPorts>,
    /// Sockets toward the destination in TIME_WAIT at that moment.
    pub time_wait: u32,
}

impl DestPeak {
    /// `used / capacity` (0 for a namespace without capacity).
    pub fn ratio(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            f64::from(self.used) / f64::from(self.capacity)
        }
    }
}

impl Model {
    /// Turns peak tracking on or off (off forgets what was tracked).
    pub fn track_peaks(&mut self, on: bool) {
        self.peaks.on = on;
        if !on {
            self.peaks.by_dest = FxHashMap::default();
        }
    }

    /// The hook: destination row `dest` just gained a used port.
    pub(super) fn note_used_increase(&mut self, dest: u32) {
        if !self.peaks.on {
            return;
        }
        let d = &self.dests[dest as usize];
        if self
            .peaks
            .by_dest
            .get(&d.key)
            .is_some_and(|p| p.used >= d.used)
        {
            return;
        }
        let mut owners = self.dest_owners(d);
        owners.truncate(PEAK_OWNERS);
        let peak = DestPeakAgg {
            used: d.used,
            at_ns: self.now_ns,
            capacity: self.capacity(d.key.netns),
            time_wait: d.states[TcpState::TimeWait as usize],
            owners,
        };
        let key = d.key;
        self.peaks.by_dest.insert(key, peak);
    }

    /// Every destination's peak, busiest (highest `used / capacity`) first.
    pub fn peaks(&self) -> Vec<DestPeak> {
        let mut v: Vec<DestPeak> = self
            .peaks
            .by_dest
            .iter()
            .map(|(k, p)| {
                let t = Tuple {
                    v6: k.v6,
                    saddr: k.saddr,
                    daddr: k.daddr,
                    sport: 0,
                    dport: k.dport,
                };
                DestPeak {
                    netns: k.netns,
                    saddr: t.saddr().to_string(),
                    daddr: t.daddr().to_string(),
                    dport: k.dport,
                    capacity: p.capacity,
                    used: p.used,
                    at_ns: p.at_ns,
                    owners: p.owners.clone(),
                    time_wait: p.time_wait,
                }
            })
            .collect();
        v.sort_by(|a, b| {
            b.ratio()
                .total_cmp(&a.ratio())
                .then(b.used.cmp(&a.used))
                .then_with(|| {
                    (a.netns, &a.daddr, a.dport, &a.saddr)
                        .cmp(&(b.netns, &b.daddr, b.dport, &b.saddr))
                })
        });
        v
    }

    /// A destination's current `(used, TIME_WAIT)`, if the model has a row for it.
    pub fn dest_level(
        &self,
        netns: u32,
        saddr: IpAddr,
        daddr: IpAddr,
        dport: u16,
    ) -> Option<(u32, u32)> {
        let key = DestKey {
            netns,
            v6: saddr.is_ipv6(),
            saddr: ip_bytes(saddr),
            daddr: ip_bytes(daddr),
            dport,
        };
        let &i = self.dest_index.get(&key)?;
        let d = &self.dests[i as usize];
        Some((d.used, d.states[TcpState::TimeWait as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NetnsConfig, TcpState, View};
    use super::*;
    use crate::events::{Comm, Family, Kind, TraceEvent};

    const NS: u32 = 4026532100;
    const S: u64 = 1_000_000_000;

    fn ev(sock: u64, ts: u64, sport: u16, old: TcpState, new: TcpState) -> TraceEvent {
        TraceEvent {
            kind: Kind::State,
            ts_ns: ts,
            pid: 4242,
            tid: 4242,
            comm: Comm::from("client"),
            cgroup_id: 1,
            netns: NS,
            sock,
            family: Family::Ipv4,
            saddr: "127.0.0.1".parse().unwrap(),
            sport,
            daddr: "127.0.0.1".parse().unwrap(),
            dport: 9000,
            old_state: Some(old),
            new_state: Some(new),
            errno: None,
            bound_port: None,
        }
    }

    fn model(peaks: bool) -> Model {
        let mut m = Model::new();
        m.track_peaks(peaks);
        m.set_netns_config(
            NS,
            NetnsConfig {
                port_range: (3306, 3309),
                ..Default::default()
            },
        );
        m
    }

    /// Fills the range (one port a second from 1 s), then closes every socket
    /// actively (TIME_WAIT) from 10 s, then lets TIME_WAIT expire.
    fn fill_then_close(m: &mut Model) {
        use TcpState::*;
        for (i, port) in (3306..=3309).enumerate() {
            let (sock, ts) = (0x100 + i as u64, (1 + i as u64) * S);
            m.apply(&ev(sock, ts, 0, Close, SynSent));
            m.apply(&ev(sock, ts + 1, port, SynSent, Established));
        }
        for (i, port) in (3306..=3309).enumerate() {
            let (sock, ts) = (0x100 + i as u64, (10 + i as u64) * S);
            m.apply(&ev(sock, ts, port, Established, FinWait1));
            m.apply(&ev(sock, ts + 1, port, FinWait1, FinWait2));
            m.apply(&ev(sock, ts + 2, port, FinWait2, Close));
        }
        m.tick(200 * S);
    }

    #[test]
    fn peak_is_capacity_when_filled_with_the_holder_at_that_time() {
        let mut m = model(true);
        fill_then_close(&mut m);
        // The destination is empty (and pruned) now; its peak stays.
        let snap = m.snapshot(View::default());
        assert!(snap.netns.iter().all(|n| n.destinations.is_empty()));
        let peaks = m.peaks();
        assert_eq!(peaks.len(), 1);
        let p = &peaks[0];
        assert_eq!((p.used, p.capacity), (4, 4));
        assert_eq!(
            (p.daddr.as_str(), p.dport, p.saddr.as_str()),
            ("127.0.0.1", 9000, "127.0.0.1")
        );
        // Reached when the fourth connection got its port, not later.
        assert_eq!(p.at_ns, 4 * S + 1);
        assert_eq!(
            p.owners,
            vec![OwnerPorts {
                pid: 4242,
                comm: "client".into(),
                ports: 4,
                cgroup_id: 1,
                workload: None,
                client: None,
            }]
        );
        assert_eq!(p.time_wait, 0);
        assert_eq!(p.ratio(), 1.0);
    }

    #[test]
    fn timewait_at_peak_is_counted() {
        use TcpState::*;
        let mut m = model(true);
        // Two connections; the first closes into TIME_WAIT, then two more open: the
        // peak (3) has one TIME_WAIT.
        m.apply(&ev(1, S, 0, Close, SynSent));
        m.apply(&ev(1, S + 1, 3306, SynSent, Established));
        m.apply(&ev(2, S + 2, 0, Close, SynSent));
        m.apply(&ev(2, S + 3, 3307, SynSent, Established));
        m.apply(&ev(1, 2 * S, 3306, Established, FinWait1));
        m.apply(&ev(1, 2 * S + 1, 3306, FinWait1, FinWait2));
        m.apply(&ev(1, 2 * S + 2, 3306, FinWait2, Close));
        m.apply(&ev(3, 3 * S, 0, Close, SynSent));
        m.apply(&ev(3, 3 * S + 1, 3308, SynSent, Established));
        let p = &m.peaks()[0];
        assert_eq!((p.used, p.time_wait, p.at_ns), (3, 1, 3 * S + 1));
        assert_eq!(
            m.dest_level(NS, p.saddr.parse().unwrap(), p.daddr.parse().unwrap(), 9000),
            Some((3, 1))
        );
    }

    #[test]
    fn off_by_default_and_tracks_nothing() {
        let mut m = Model::new();
        m.set_netns_config(
            NS,
            NetnsConfig {
                port_range: (3306, 3309),
                ..Default::default()
            },
        );
        fill_then_close(&mut m);
        assert!(m.peaks().is_empty());
        let mut m = model(true);
        fill_then_close(&mut m);
        m.track_peaks(false);
        assert!(m.peaks().is_empty());
    }
}
