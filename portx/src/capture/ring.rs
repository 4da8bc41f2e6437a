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
