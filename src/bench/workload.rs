//! What a bench run sends and how it is paced and measured: the event data, the event types,
//! the chaos schedule, the ack cadence, and the latency histograms.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::event::EventType;

/// With `chaos`: how often connections are dropped and resumed...
pub const CHAOS_INTERVAL: Duration = Duration::from_millis(100);

/// ...and which share of them each time.
pub const CHAOS_FRACTION: f64 = 0.10;

/// Clients ack after this many events that asked for an ack (and when they are done).
pub const ACK_EVERY: u32 = 16;

/// The data of every bench event. Field order is fixed (serde follows declaration order), which
/// the client's fast scanner relies on; the simd-json cross-check does not.
#[derive(Serialize)]
pub(super) struct Payload<'a> {
    pub(super) to: u32,
    pub(super) p: u32,
    pub(super) n: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) sched: Option<u64>,
    pub(super) text: &'a str,
}

pub(super) const TYPES: [EventType<'static>; 5] = [
    EventType::AgentStarted,
    EventType::AgentThinking,
    EventType::ToolExecuting,
    EventType::ToolCompleted,
    EventType::AgentCompleted,
];

/// A histogram of nanoseconds from 1 ns to 60 s at 3 significant digits.
pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}
