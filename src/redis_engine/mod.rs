//! The Redis engine's side of Redis (feature `redis`): what lets gateway nodes share one Redis
//! so that a user's devices, producers and resumes may land on any node (docs/SCALING.md).
//!
//! The gateway starts a [`node::Node`] with `engine = "redis"`: its publisher thread
//! ([`publisher`]: emitted events, sequenced by Redis in one script run per batch,
//! [`sequencer`]) and its log reader ([`subscriber`]: every node's batches, [`wire`], into the
//! shards' rings). Neither runs on a reactor.

mod backoff;
pub(crate) mod node;
pub(crate) mod publisher;
pub(crate) mod sequencer;
pub(crate) mod server;
pub(crate) mod subscriber;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod wire;
