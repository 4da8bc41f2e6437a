//! How one client (an owner, toward one destination) behaves: how often it opens
//! connections, how long they live, who closes them, and whether its established
//! connections only grow. Kept per (destination, owner) beside the port counts,
//! in buckets of event time, small enough for 100k destinations (~150 bytes each).

/// Seconds per bucket of the rings.
pub const BUCKET_S: u64 = 5;
/// Buckets: one minute of history.
pub const BUCKETS: usize = 12;
/// Lifetime histogram: bucket `i` holds lifetimes of about `LIFE_MIN_US * 2^(i/2)`.
const LIFE_BUCKETS: usize = 32;
const LIFE_MIN_US: f64 = 100.0;

#[derive(Clone, Debug, Default)]
pub struct ClientStats {
    /// Bucket (of [`BUCKET_S`] seconds of event time) of `opens[0]`'s slot; a ring.
    head: u64,
    started: bool,
    /// When it was first seen: rates count only the time it has been followed.
    first_ns: u64,
    /// Connections opened (a source port allocated) per bucket.
    opens: [u32; BUCKETS],
    /// Established connections at the start of each bucket.
    est_levels: [u32; BUCKETS],
    /// Connection lifetimes (out of SYN_SENT to the first close), decayed by half
    /// every minute so the figures follow a client that changes.
    lifetimes: [u16; LIFE_BUCKETS],
    /// Closes begun by the client (ESTABLISHED -> FIN_WAIT1) and by the server
    /// (ESTABLISHED -> CLOSE_WAIT), decayed likewise.
    client_closes: u32,
    server_closes: u32,
    last_decay: u64,
    /// Connections of this client now established.
    pub established: u32,
    /// Its ports toward the destination now in TIME_WAIT.
    pub time_wait: u32,
}

impl ClientStats {
    fn advance(&mut self, now_ns: u64) {
        let b = now_ns / 1_000_000_000 / BUCKET_S;
        if !self.started {
            self.started = true;
            self.first_ns = now_ns;
            self.head = b;
            self.last_decay = b;
            self.est_levels = [self.established; BUCKETS];
            return;
        }
        if b <= self.head {
            return;
        }
        let steps = (b - self.head).min(BUCKETS as u64);
        for i in 1..=steps {
            let slot = ((self.head + i) % BUCKETS as u64) as usize;
            self.opens[slot] = 0;
            self.est_levels[slot] = self.established;
        }
        self.head = b;
        let minutes = (b - self.last_decay) / BUCKETS as u64;
        if minutes > 0 {
            let shift = minutes.min(16) as u32;
            for l in &mut self.lifetimes {
                *l >>= shift;
            }
            self.client_closes >>= shift;
            self.server_closes >>= shift;
            self.last_decay = b;
        }
    }

    /// A source port was allocated (connect()).
    pub fn open(&mut self, now_ns: u64) {
        // A late event (from another CPU) counts in the current bucket; an early one
        // keeps its time, which the first sets as when the client was first seen.
        let t = now_ns.max(self.head * BUCKET_S * 1_000_000_000);
        self.advance(t);
        let slot = ((t / 1_000_000_000 / BUCKET_S) % BUCKETS as u64) as usize;
        self.opens[slot] = self.opens[slot].saturating_add(1);
    }

    /// The established count changed (by `delta`), at `now_ns`.
    pub fn established_by(&mut self, now_ns: u64, delta: i32) {
        self.advance(now_ns);
        self.established = self.established.saturating_add_signed(delta);
    }

    /// A connection that lived `life_ns` began closing, by the client or not.
    pub fn closed(&mut self, now_ns: u64, life_ns: u64, by_client: bool) {
        self.advance(now_ns);
        let us = life_ns as f64 / 1000.0;
        let i = if us <= LIFE_MIN_US {
            0
        } else {
            ((2.0 * (us / LIFE_MIN_US).log2()).round() as usize).min(LIFE_BUCKETS - 1)
        };
        self.lifetimes[i] = self.lifetimes[i].saturating_add(1);
        if by_client {
            self.client_closes = self.client_closes.saturating_add(1);
        } else {
            self.server_closes = self.server_closes.saturating_add(1);
        }
    }

    /// The figures at `now_ns`.
    pub fn view(&mut self, now_ns: u64) -> ClientView {
        self.advance(now_ns);
        let now_b = now_ns / 1_000_000_000 / BUCKET_S;
        // The current bucket is partial: rates count the time it has run, and no more
        // than the client has been followed.
        let bucket_ns = BUCKET_S * 1_000_000_000;
        let into_s = (now_ns % bucket_ns) as f64 / 1e9;
        let age_s = now_ns.saturating_sub(self.first_ns) as f64 / 1e9;
        let span = |n: usize| {
            ((n as f64 - 1.0) * BUCKET_S as f64 + into_s)
                .min(age_s)
                .max(1.0)
        };
        let recent = |n: usize| -> f64 {
            let opens: u32 = (0..n as u64)
                .map(|k| self.opens[((now_b + BUCKETS as u64 - k) % BUCKETS as u64) as usize])
                .sum();
            f64::from(opens) / span(n)
        };
        let closes = self.client_closes + self.server_closes;
        let level = |b: u64| i64::from(self.est_levels[(b % BUCKETS as u64) as usize]);
        let est = i64::from(self.established);
        ClientView {
            rate_10s: recent(2),
            rate_60s: recent(BUCKETS),
            window_s: span(BUCKETS),
            lifetime_median_ms: self.quantile(0.5),
            lifetime_p90_ms: self.quantile(0.9),
            client_close_share: (closes > 0)
                .then(|| f64::from(self.client_closes) / f64::from(closes)),
            closes,
            established: self.established,
            // Against the level at the start of the oldest bucket, and of the last
            // but one (5 to 10 s ago).
            established_growth_60s: est - level(now_b + 1),
            established_growth_10s: est - level(now_b + BUCKETS as u64 - 1),
        }
    }

    fn quantile(&self, q: f64) -> Option<f64> {
        let total: u32 = self.lifetimes.iter().map(|&c| u32::from(c)).sum();
        if total == 0 {
            return None;
        }
        let want = (q * f64::from(total)).ceil().max(1.0) as u32;
        let mut seen = 0;
        for (i, &c) in self.lifetimes.iter().enumerate() {
            seen += u32::from(c);
            if seen >= want {
                return Some(LIFE_MIN_US * 2f64.powf(i as f64 / 2.0) / 1000.0);
            }
        }
        None
    }
}

/// A client's figures, as a snapshot shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientView {
    /// New connections per second, over the last 10 s and the last minute.
    pub rate_10s: f64,
    pub rate_60s: f64,
    /// Seconds `rate_60s` and `established_growth_60s` cover: a minute, or since the
    /// client was first seen.
    #[serde(default)]
    pub window_s: f64,
    /// Connection lifetime (out of SYN_SENT to the first close), about the last minute.
    pub lifetime_median_ms: Option<f64>,
    pub lifetime_p90_ms: Option<f64>,
    /// Share of the closes the client began (it then holds the TIME_WAIT).
    pub client_close_share: Option<f64>,
    /// Closes counted for the figures above (decayed: about the last minute).
    pub closes: u32,
    pub established: u32,
    /// Established connections now minus a minute ago (or when first seen).
    pub established_growth_60s: i64,
    /// The same over the last 5 to 10 s: whether it still grows.
    #[serde(default)]
    pub established_growth_10s: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn rates_lifetimes_and_closers() {
        let mut c = ClientStats::default();
        // 100 connections a second for 20 s, each living 40 ms, closed by the client.
        for ms in 0..20_000u64 {
            if ms % 10 == 0 {
                let t = ms * 1_000_000;
                c.open(t);
                c.established_by(t, 1);
                c.established_by(t + 40_000_000, -1);
                c.closed(t + 40_000_000, 40_000_000, true);
            }
        }
        let v = c.view(20 * S);
        assert!((v.rate_10s - 100.0).abs() < 15.0, "{v:?}");
        assert!((v.rate_60s - 100.0).abs() < 15.0, "{v:?}");
        let med = v.lifetime_median_ms.unwrap();
        assert!((30.0..=60.0).contains(&med), "{v:?}");
        assert_eq!(v.client_close_share, Some(1.0));
        assert_eq!(v.established, 0);
        // A minute later with nothing new: the rate falls to 0, lifetimes decay.
        let v = c.view(90 * S);
        assert_eq!(v.rate_10s, 0.0);
        assert!(v.closes < 2000);
    }

    #[test]
    fn a_client_first_seen_mid_bucket_has_its_own_rate() {
        // 80/s from 102 s (2 s into a 5 s bucket) to 108 s: 480 opens in 6 s.
        let mut c = ClientStats::default();
        for i in 0..480u64 {
            let t = 102 * S + i * S / 80;
            c.open(t);
            c.established_by(t, 1);
        }
        let v = c.view(108 * S);
        assert!((v.rate_10s - 80.0).abs() < 2.0, "{v:?}");
        assert!((v.rate_60s - 80.0).abs() < 2.0, "{v:?}");
        assert!((v.window_s - 6.0).abs() < 0.1, "{v:?}");
        assert_eq!(v.established_growth_60s, 480);
        // The level at 100 s, before it was seen: it was seen with none.
        assert_eq!(v.established_growth_10s, 480);
    }

    #[test]
    fn established_growth_shows_a_leak() {
        let mut c = ClientStats::default();
        for s in 0..70u64 {
            c.open(s * S);
            c.established_by(s * S, 1);
        }
        let v = c.view(70 * S);
        assert!(v.established_growth_60s >= 55, "{v:?}");
        assert!((5..=10).contains(&v.established_growth_10s), "{v:?}");
        assert_eq!(v.closes, 0);
        assert_eq!(v.lifetime_median_ms, None);
        assert!((v.rate_60s - 1.0).abs() < 0.2, "{v:?}");
    }
}
