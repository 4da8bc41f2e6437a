//! The compact encoding of a batch of events (one events frame). CONTRACT STUB.
