//! The flight recorder's memory: frames kept in generations, each starting with a
//! state, evicted whole, oldest first (a generation without its state could not be
//! read alone).

use std::{collections::VecDeque, io};

/// One generation: its state frames and the frames pushed after them.
struct Generation {
    start_ns: u64,
    bytes: Vec<u8>,
    events: u64,
    newest_ns: u64,
}

/// Frames in memory, bounded by time and bytes.
pub struct FlightRing {
    window_ns: u64,
    max_bytes: usize,
    gens: VecDeque<Generation>,
    bytes: usize,
    evicted_events: u64,
    evicted_until_ns: u64,
}

impl FlightRing {
    /// Keeps at least `window_ns` of history where `max_bytes` allows.
    pub fn new(window_ns: u64, max_bytes: usize) -> Self {
        Self {
            window_ns,
            max_bytes,
            gens: VecDeque::new(),
            bytes: 0,
            evicted_events: 0,
            evicted_until_ns: 0,
        }
    }

    /// Starts a generation at `at_ns` whose first frames (`state`) let a reader know
    /// what was already held.
    pub fn start_generation(&mut self, at_ns: u64, state: Vec<u8>) {
        self.bytes += state.len();
        self.gens.push_back(Generation {
            start_ns: at_ns,
            bytes: state,
            events: 0,
            newest_ns: at_ns,
        });
    }

    /// Appends frames holding `events` events, the newest at `last_ns`. Without a
    /// generation yet, one starts at `last_ns` (with no state).
    pub fn push(&mut self, frames: Vec<u8>, events: u64, last_ns: u64) {
        if self.gens.is_empty() {
            self.start_generation(last_ns, Vec::new());
        }
        self.bytes += frames.len();
        if let Some(g) = self.gens.back_mut() {
            g.bytes.extend_from_slice(&frames);
            g.events += events;
            g.newest_ns = g.newest_ns.max(last_ns);
        }
    }

    /// Drops whole generations (never the newest) while the oldest kept one is not
    /// needed for the window at `now_ns` (its successor starts at or before
    /// `now_ns - window`) or the bytes exceed the bound.
    pub fn evict(&mut self, now_ns: u64) {
        let horizon = now_ns.saturating_sub(self.window_ns);
        while self.gens.len() >= 2 {
            let covered = self.gens[1].start_ns <= horizon;
            if !covered && self.bytes <= self.max_bytes {
                break;
            }
            let Some(g) = self.gens.pop_front() else {
                break;
            };
            self.bytes -= g.bytes.len();
            if g.events > 0 {
                self.evicted_events += g.events;
                self.evicted_until_ns = self.evicted_until_ns.max(g.newest_ns);
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes of the newest generation (the recorder starts a new one when it grows).
    pub fn newest_bytes(&self) -> usize {
        self.gens.back().map_or(0, |g| g.bytes.len())
    }

    /// Events evicted so far, and the time of the newest evicted.
    pub fn evicted(&self) -> (u64, u64) {
        (self.evicted_events, self.evicted_until_ns)
    }

    /// Generations held.
    pub fn generations(&self) -> usize {
        self.gens.len()
    }

    /// Writes every frame held, oldest first.
    pub fn write_to(&self, out: &mut impl io::Write) -> io::Result<()> {
        self.gens.iter().try_for_each(|g| out.write_all(&g.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        capture::{MAGIC, Record, codec, reader::Reader, testdata, writer::Encoder},
        model::input::Input,
    };

    const S: u64 = 1_000_000_000;

    #[test]
    fn evicts_generations_the_window_no_longer_needs() {
        let mut r = FlightRing::new(60 * S, usize::MAX);
        r.start_generation(0, vec![1; 10]);
        r.push(vec![2; 5], 3, 20 * S);
        r.start_generation(30 * S, vec![3; 10]);
        r.push(vec![4; 5], 2, 40 * S);
        r.start_generation(70 * S, vec![5; 10]);
        assert_eq!((r.bytes(), r.newest_bytes(), r.generations()), (40, 10, 3));
        // At 89 s the window starts at 29 s: the first generation is still needed
        // (its successor starts after 29 s).
        r.evict(89 * S);
        assert_eq!(r.generations(), 3);
        assert_eq!(r.evicted(), (0, 0));
        r.evict(90 * S);
        assert_eq!((r.generations(), r.bytes()), (2, 25));
        assert_eq!(r.evicted(), (3, 20 * S));
        // Far later: the newest stays, whatever the window says.
        r.evict(1000 * S);
        assert_eq!((r.generations(), r.bytes()), (1, 10));
        assert_eq!(r.evicted(), (5, 40 * S));
        r.evict(u64::MAX);
        assert_eq!(r.generations(), 1);
    }

    #[test]
    fn evicts_by_bytes_but_never_the_newest() {
        let mut r = FlightRing::new(3600 * S, 100);
        r.start_generation(0, vec![0; 60]);
        r.push(vec![0; 10], 7, 5);
        r.start_generation(10, vec![0; 60]);
        r.evict(11);
        assert_eq!((r.generations(), r.bytes()), (1, 60));
        assert_eq!(r.evicted(), (7, 5));
        r.push(vec![0; 200], 1, 12);
        r.evict(13);
        assert_eq!(
            (r.generations(), r.bytes(), r.newest_bytes()),
            (1, 260, 260)
        );
        // A generation without events moves no counter.
        let mut r = FlightRing::new(0, 0);
        r.start_generation(0, vec![0; 1]);
        r.start_generation(1, vec![0; 1]);
        r.evict(2);
        assert_eq!(r.evicted(), (0, 0));
        // Pushing before any generation starts one.
        let mut r = FlightRing::new(0, 0);
        r.push(vec![0; 3], 1, 9);
        assert_eq!((r.generations(), r.bytes()), (1, 3));
    }

    #[test]
    fn what_it_writes_reads_back_after_a_file_start() {
        let mut enc = Encoder::new();
        let recs = testdata::non_event_records();
        let events = codec::tests::varied_events();
        let mut ring = FlightRing::new(10 * S, usize::MAX);
        let mut want = Vec::new();
        for (g, chunk) in events.chunks(4).enumerate() {
            let mut state = Vec::new();
            enc.record(&recs[1], &mut state);
            ring.start_generation(g as u64 * 20 * S, state);
            let mut frames = Vec::new();
            chunk.iter().for_each(|e| enc.push_event(e));
            let n = enc.flush_events(&mut frames);
            ring.push(frames, n as u64, g as u64 * 20 * S + 1);
            if g > 0 {
                want.push(recs[1].clone());
                want.extend(chunk.iter().map(|e| Record::Input(Input::Event(e.clone()))));
            }
        }
        ring.evict(41 * S);
        assert_eq!(ring.evicted(), (4, 1));
        let mut file = Vec::new();
        enc.file_start(&testdata::header(), &mut file);
        ring.write_to(&mut file).unwrap();
        let mut r = Reader::new(file.as_slice(), "ring").unwrap();
        let got: Vec<Record> = r.by_ref().collect::<Result<_, _>>().unwrap();
        assert_eq!(got[0], recs[0]);
        assert_eq!(got[1..], want[..]);
        assert_eq!(r.status().bytes, file.len() as u64);
        assert!(file.starts_with(&MAGIC));
    }
}
