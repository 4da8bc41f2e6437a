//! Framing: `type u16 | flags u16 | len u32 | crc32c u32 | body` (see
//! docs/capture-format.md). CONTRACT STUB: to be implemented.
