//! The Redis engine's side of Redis (feature `redis`): what lets gateway nodes share one Redis
//! so that a user's devices, producers and resumes may land on any node (docs/SCALING.md).
//!
//! Built so far: sequencing ([`sequencer`]) and the batch message every node reads
//! ([`wire`]), tested against a real `redis-server`. Not yet wired into the gateway: until the
//! engine setting uses them, only their tests do.
#![cfg_attr(not(test), allow(dead_code))]

mod backoff;
pub(crate) mod node;
pub(crate) mod publisher;
pub(crate) mod sequencer;
pub(crate) mod server;
pub(crate) mod subscriber;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod wire;
