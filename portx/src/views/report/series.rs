//! A destination's use over time, bounded: points are taken at the events that touch
//! the destination, at most one per time bucket (keeping the highest `used`), and the
//! buckets double in width whenever the points outgrow twice the target, so memory
//! stays fixed however long the recording and however busy the destination.

use serde::Serialize;

/// Points a chart gets at most.
pub const MAX_POINTS: usize = 400;
/// The first bucket width: 1 ms.
const FIRST_BUCKET_NS: u64 = 1_000_000;

/// One sample: boot-time clock, ports used, TIME_WAIT sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Point {
    pub t_ns: u64,
    pub used: u32,
    pub time_wait: u32,
}

#[derive(Clone, Debug)]
pub struct Series {
    points: Vec<Point>,
    bucket_ns: u64,
}

impl Default for Series {
    fn default() -> Self {
        Self {
            points: Vec::new(),
            bucket_ns: FIRST_BUCKET_NS,
        }
    }
}

impl Series {
    /// Adds a sample; samples come in time order.
    pub fn push(&mut self, p: Point) {
        match self.points.last_mut() {
            Some(last) if last.t_ns / self.bucket_ns == p.t_ns / self.bucket_ns => {
                if p.used >= last.used {
                    *last = Point {
                        t_ns: last.t_ns,
                        ..p
                    };
                }
            }
            _ => self.points.push(p),
        }
        if self.points.len() > 2 * MAX_POINTS {
            self.coarsen();
        }
    }

    /// The highest `used` sampled.
    pub fn max_used(&self) -> u32 {
        self.points.iter().map(|p| p.used).max().unwrap_or(0)
    }

    /// Doubles the bucket width and merges points that now share a bucket.
    fn coarsen(&mut self) {
        self.bucket_ns = self.bucket_ns.saturating_mul(2);
        let b = self.bucket_ns;
        let mut merged: Vec<Point> = Vec::with_capacity(self.points.len() / 2 + 1);
        for p in self.points.drain(..) {
            match merged.last_mut() {
                Some(last) if last.t_ns / b == p.t_ns / b => {
                    if p.used >= last.used {
                        *last = Point {
                            t_ns: last.t_ns,
                            ..p
                        };
                    }
                }
                _ => merged.push(p),
            }
        }
        self.points = merged;
    }

    /// The points for a chart: `extra` (the exact peak, the level at the end) merged
    /// in by time, then at most [`MAX_POINTS`].
    pub fn finish(mut self, extra: &[Point]) -> Vec<Point> {
        for &p in extra {
            let at = self.points.partition_point(|q| q.t_ns <= p.t_ns);
            self.points.insert(at, p);
        }
        while self.points.len() > MAX_POINTS {
            self.coarsen();
        }
        self.points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded_and_keeps_the_maximum() {
        let mut s = Series::default();
        for i in 0..100_000u64 {
            let used = if i == 54_321 { 999 } else { (i % 10) as u32 };
            s.push(Point {
                t_ns: i * 100_000,
                used,
                time_wait: 1,
            });
            assert!(s.points.len() <= 2 * MAX_POINTS);
        }
        assert_eq!(s.max_used(), 999);
        let pts = s.finish(&[]);
        assert!(
            pts.len() <= MAX_POINTS && pts.len() > MAX_POINTS / 4,
            "{}",
            pts.len()
        );
        assert_eq!(pts.iter().map(|p| p.used).max(), Some(999));
        assert!(pts.windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
    }
}
