//! Allocation rate and time-to-exhaustion, from per-second buckets of event time.

/// Seconds of history the rate and trend look at.
pub const WINDOW_S: usize = 10;

/// Counts per one-second bucket, plus the `used` level at the start of each bucket so
/// the net trend (allocations minus releases) can be estimated.
#[derive(Clone, Debug, Default)]
pub struct RateWindow {
    /// Second (of event time) of `counts[0]`'s bucket; buckets are a ring.
    head_s: u64,
    counts: [u32; WINDOW_S],
    levels: [u32; WINDOW_S],
    started: bool,
    /// Event time of the first allocation (0: none yet): a window younger than
    /// [`WINDOW_S`] measures over the time it has, not over empty seconds it never saw.
    first_ns: u64,
}

impl RateWindow {
    /// Moves the window to second `now_s`, clearing buckets that fell out of it.
    fn advance(&mut self, now_s: u64, level: u32) {
        if !self.started {
            self.started = true;
            self.head_s = now_s;
            self.levels = [level; WINDOW_S];
            return;
        }
        if now_s <= self.head_s {
            return;
        }
        let steps = (now_s - self.head_s).min(WINDOW_S as u64);
        for i in 1..=steps {
            let slot = ((self.head_s + i) % WINDOW_S as u64) as usize;
            self.counts[slot] = 0;
            self.levels[slot] = level;
        }
        self.head_s = now_s;
    }

    /// Records one allocation at `now_ns`, with `level` ports in use before it.
    pub fn record(&mut self, now_ns: u64, level: u32) {
        // Events from different CPUs can arrive slightly out of order: count a late one
        // in the current second rather than in a bucket that belongs to the future.
        let now_s = (now_ns / 1_000_000_000).max(self.head_s);
        if self.first_ns == 0 {
            self.first_ns = now_ns.max(1);
        }
        self.advance(now_s, level);
        let slot = (now_s % WINDOW_S as u64) as usize;
        self.counts[slot] = self.counts[slot].saturating_add(1);
    }

    /// Allocations per second over the window ending at `now_ns`.
    pub fn per_second(&mut self, now_ns: u64, level: u32) -> f64 {
        self.advance(now_ns / 1_000_000_000, level);
        let age_s = now_ns.saturating_sub(self.first_ns) as f64 / 1e9;
        f64::from(self.counts.iter().sum::<u32>()) / age_s.clamp(1.0, WINDOW_S as f64)
    }

    /// Seconds until `level` reaches `capacity` at the window's net growth, if growing.
    pub fn eta(&mut self, now_ns: u64, level: u32, capacity: u32) -> Option<f64> {
        let now_s = now_ns / 1_000_000_000;
        self.advance(now_s, level);
        // The oldest bucket still in the window holds the level WINDOW_S-1 s ago.
        let oldest = ((now_s + 1) % WINDOW_S as u64) as usize;
        let growth = f64::from(level) - f64::from(self.levels[oldest]);
        if growth <= 0.0 {
            return None;
        }
        let oldest_s = (now_s + 1).saturating_sub(WINDOW_S as u64);
        let since = (oldest_s * 1_000_000_000).max(self.first_ns);
        let elapsed_s = now_ns.saturating_sub(since) as f64 / 1e9;
        let per_s = growth / elapsed_s.max(1.0);
        Some(f64::from(capacity.saturating_sub(level)) / per_s)
    }

    /// No allocation in the whole window.
    pub fn idle(&self, now_ns: u64) -> bool {
        now_ns / 1_000_000_000 >= self.head_s + WINDOW_S as u64
            || self.counts.iter().all(|&c| c == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn rate_counts_the_window_only() {
        let mut w = RateWindow::default();
        for i in 0..75u64 {
            // 5 allocations per second for 15 s: the last 10 s are counted.
            w.record(95 * S + i * S / 5, i as u32);
        }
        let rate = w.per_second(109 * S + S / 2, 50);
        assert!((rate - 5.0).abs() < 1e-9, "{rate}");
        // 20 s later with nothing new, the rate has decayed to zero.
        assert_eq!(w.per_second(130 * S, 50), 0.0);
        assert!(w.idle(130 * S));
    }

    #[test]
    fn eta_from_net_growth() {
        let mut w = RateWindow::default();
        // Level grows by 10 per second from 0 at t=100 s.
        for s in 0..10u64 {
            for k in 0..10u32 {
                w.record((100 + s) * S + u64::from(k) * S / 10, (s as u32) * 10 + k);
            }
        }
        // At t=109.9 s the level is 100; capacity 1000 leaves 900 ports at 10/s.
        let eta = w.eta(109 * S + 9 * S / 10, 100, 1000).unwrap();
        assert!((eta - 90.0).abs() < 3.0, "{eta}");
        // Flat or shrinking use has no ETA.
        let mut flat = RateWindow::default();
        flat.record(100 * S, 50);
        assert_eq!(flat.eta(105 * S, 50, 100), None);
        assert_eq!(flat.eta(106 * S, 40, 100), None);
    }

    #[test]
    fn a_young_window_measures_the_time_it_has() {
        // 100 allocations a second from t=100 s, 3 s so far: the rate is 100/s, not
        // 300 over the 10 s window, and 200 ports left go in 2 s.
        let mut w = RateWindow::default();
        for i in 0..300u32 {
            w.record(100 * S + u64::from(i) * S / 100, i);
        }
        let rate = w.per_second(103 * S, 300);
        assert!((rate - 100.0).abs() < 1.0, "{rate}");
        let eta = w.eta(103 * S, 300, 500).unwrap();
        assert!((eta - 2.0).abs() < 0.1, "{eta}");
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let mut w = RateWindow::default();
        w.record(100 * S, 0);
        w.record(99 * S, 1);
        assert!(w.per_second(100 * S, 2) > 0.0);
    }
}
