//! The flight recorder's memory: frames kept in generations, each starting with a
//! state, evicted whole, oldest first. CONTRACT STUB: signatures are the interface.

use std::io;

/// Frames in memory, bounded by time and bytes.
pub struct FlightRing {}

impl FlightRing {
    /// Keeps at least `window_ns` of history where `max_bytes` allows.
    pub fn new(_window_ns: u64, _max_bytes: usize) -> Self {
        unimplemented!()
    }
    /// Starts a generation at `at_ns` whose first frames (`state`) let a reader know
    /// what was already held.
    pub fn start_generation(&mut self, _at_ns: u64, _state: Vec<u8>) {
        unimplemented!()
    }
    /// Appends frames holding `events` events, the newest at `last_ns`.
    pub fn push(&mut self, _frames: Vec<u8>, _events: u64, _last_ns: u64) {
        unimplemented!()
    }
    /// Drops whole generations (never the newest) while the oldest kept one is not
    /// needed for the window at `now_ns` or the bytes exceed the bound.
    pub fn evict(&mut self, _now_ns: u64) {
        unimplemented!()
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        unimplemented!()
    }
    /// Bytes of the newest generation (the recorder starts a new one when it grows).
    pub fn newest_bytes(&self) -> usize {
        unimplemented!()
    }
    /// Events evicted so far, and the time of the newest evicted.
    pub fn evicted(&self) -> (u64, u64) {
        unimplemented!()
    }
    /// Writes every frame held, oldest first.
    pub fn write_to(&self, _out: &mut impl io::Write) -> io::Result<()> {
        unimplemented!()
    }
}
