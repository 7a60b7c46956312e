//! A user's delivery state, published by reactor shards and read by emitters without a lock.
//!
//! A fixed table of atomic words, indexed by a hash of the user id. Each word packs a tag (the
//! hash's high half) with the user's connection count, how many of those have an open circuit
//! breaker, and the lowest breaker health. A shard writes the word of a user whenever that
//! user's connections or breakers change. A reader loads one word and checks the tag. Two users
//! whose hashes share a slot overwrite each other, and the reader of the other one then gets
//! `None` ("not known"), never the wrong user's state. The memory is fixed whatever the number
//! of users.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::record::user_hash as hash;

/// Slots in the table (a power of two): 512 KiB. The slot comes from the hash's low bits and
/// the tag from its high half, so the shard choice (`hash % shards`) does not bias the tag.
const SLOTS: usize = 1 << 16;

/// What the gateway knows about delivery to one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Open WebSocket connections of the user (255 means 255 or more).
    pub connections: u8,
    /// How many of them have an open circuit breaker: they fell behind, and their events
    /// wait in history until the breaker half-opens.
    pub breakers_open: u8,
    /// The lowest breaker health among them, 0 to 100 (100 with no connection).
    pub health: u8,
    /// Times their breakers opened in all (the connections' failure count; 127 means 127 or
    /// more).
    pub breaker_trips: u8,
}

/// The table shared by every shard and emitter of a gateway.
pub(crate) struct DeliveryBoard {
    slots: Box<[AtomicU64]>,
}

impl std::fmt::Debug for DeliveryBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeliveryBoard({} slots)", self.slots.len())
    }
}

impl DeliveryBoard {
    pub(crate) fn new() -> DeliveryBoard {
        DeliveryBoard {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Publishes `user`'s state (called by the user's home shard only).
    pub(crate) fn publish(&self, user: &[u8], d: Delivery) {
        let h = hash(user);
        let word = (h & 0xffff_ffff_0000_0000)
            | u64::from(d.connections) << 24
            | u64::from(d.breakers_open) << 16
            | u64::from(d.health) << 8
            | u64::from(d.breaker_trips.min(127)) << 1
            | 1;
        // Relaxed: the word is self-contained (tag and state together); readers need no
        // ordering with anything else.
        self.slots[h as usize & (SLOTS - 1)].store(word, Ordering::Relaxed);
    }

    /// `user`'s last published state, if its slot holds it.
    pub(crate) fn get(&self, user: &[u8]) -> Option<Delivery> {
        let h = hash(user);
        // Relaxed: see `publish`.
        let word = self.slots[h as usize & (SLOTS - 1)].load(Ordering::Relaxed);
        let ours = word & 1 == 1 && word & 0xffff_ffff_0000_0000 == h & 0xffff_ffff_0000_0000;
        ours.then_some(Delivery {
            connections: (word >> 24) as u8,
            breakers_open: (word >> 16) as u8,
            health: (word >> 8) as u8,
            breaker_trips: (word >> 1) as u8 & 0x7f,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_published_and_nothing_for_others() {
        let b = DeliveryBoard::new();
        assert_eq!(b.get(b"alice"), None);
        let d = Delivery {
            connections: 3,
            breakers_open: 1,
            health: 75,
            breaker_trips: 2,
        };
        b.publish(b"alice", d);
        assert_eq!(b.get(b"alice"), Some(d));
        assert_eq!(b.get(b"bob"), None);
    }

    #[test]
    fn a_user_sharing_a_slot_is_never_read_as_another() {
        let b = DeliveryBoard::new();
        // Find two users in the same slot.
        let slot = |u: &str| hash(u.as_bytes()) as usize & (SLOTS - 1);
        let first = "u0".to_string();
        let other = (1..)
            .map(|i| format!("u{i}"))
            .find(|u| slot(u) == slot(&first))
            .unwrap();
        let d = Delivery {
            connections: 1,
            breakers_open: 0,
            health: 100,
            breaker_trips: 0,
        };
        b.publish(first.as_bytes(), d);
        b.publish(
            other.as_bytes(),
            Delivery {
                connections: 2,
                ..d
            },
        );
        assert_eq!(
            b.get(first.as_bytes()),
            None,
            "overwritten: unknown, not wrong"
        );
        assert_eq!(b.get(other.as_bytes()).unwrap().connections, 2);
    }
}
