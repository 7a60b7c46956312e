//! The ingest API's data, without any I/O: parsing a batch of events from JSON, the per-event
//! outcome it answers with, and the rate limit. The connection threads in [`super`] own the
//! sockets and call these.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use sonic_rs::LazyValue;

use crate::error::EmitError;
use crate::event::{Event, EventType};

/// One event as a publisher sends it. Unknown members are refused (a misspelt `data` would
/// otherwise be dropped without a word).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Item<'a> {
    #[serde(borrow)]
    pub user: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub data: Option<LazyValue<'a>>,
    #[serde(borrow, default)]
    pub run_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub thread_id: Option<Cow<'a, str>>,
    /// Overrides whether clients must ack it (default: only `agent_completed`).
    #[serde(default)]
    pub ack: Option<bool>,
    /// A key the publisher chooses (1 to [`MAX_IDEMPOTENCY_KEY`] bytes): an event whose key
    /// was accepted for the same user within `ingest_dedupe_window` is answered `duplicate`
    /// and not emitted again, so a batch retried after a timeout makes no duplicates.
    #[serde(borrow, default)]
    pub idempotency_key: Option<Cow<'a, str>>,
}

/// The longest idempotency key.
pub(crate) const MAX_IDEMPOTENCY_KEY: usize = 128;

/// A user and one of its idempotency keys.
type UserKey = (Box<str>, Box<str>);

/// The idempotency keys accepted lately: `(user, key)` pairs, each remembered for `window`
/// after it was accepted, at most `capacity` at once (past that, the oldest is forgotten
/// early and counted). Pure: the time is an argument.
#[derive(Debug)]
pub(crate) struct Dedupe {
    window: std::time::Duration,
    capacity: usize,
    seen: std::collections::HashSet<UserKey>,
    order: std::collections::VecDeque<(std::time::Instant, UserKey)>,
    /// Keys forgotten before their window ended, for want of room.
    pub evicted_early: u64,
}

impl Dedupe {
    pub(crate) fn new(window: std::time::Duration, capacity: usize) -> Dedupe {
        Dedupe {
            window,
            capacity,
            seen: Default::default(),
            order: Default::default(),
            evicted_early: 0,
        }
    }

    /// Claims `(user, key)` at `now`: true if it was not claimed within the window (it is
    /// now), false for a duplicate.
    pub(crate) fn claim(&mut self, user: &str, key: &str, now: std::time::Instant) -> bool {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= self.window)
        {
            let (_, k) = self.order.pop_front().expect("front exists");
            self.seen.remove(&k);
        }
        let k: UserKey = (user.into(), key.into());
        if self.seen.contains(&k) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
                self.evicted_early += 1;
            }
        }
        self.seen.insert(k.clone());
        self.order.push_back((now, k));
        true
    }

    /// Gives a claim back (the event could not be emitted: a retry must not be a duplicate).
    pub(crate) fn release(&mut self, user: &str, key: &str) {
        let k: UserKey = (user.into(), key.into());
        if self.seen.remove(&k) {
            if let Some(i) = self.order.iter().rposition(|(_, o)| *o == k) {
                self.order.remove(i);
            }
        }
    }
}

impl Item<'_> {
    /// The event type: one of the five built-in names, or a custom one.
    pub(crate) fn event_type(&self) -> EventType<'_> {
        match &*self.kind {
            "agent_started" => EventType::AgentStarted,
            "agent_thinking" => EventType::AgentThinking,
            "tool_executing" => EventType::ToolExecuting,
            "tool_completed" => EventType::ToolCompleted,
            "agent_completed" => EventType::AgentCompleted,
            other => EventType::Custom(other),
        }
    }

    /// The event to emit, borrowing from this item.
    pub(crate) fn event(&self) -> Event<'_, LazyValue<'_>> {
        Event::from_parts(
            self.event_type(),
            self.run_id.as_deref(),
            self.thread_id.as_deref(),
            self.data.as_ref(),
            self.ack,
        )
    }
}

/// Why a whole batch was refused (nothing in it was emitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BatchError {
    /// Not a JSON array of objects (or, on the socket, not `{"id":..,"events":[..]}`).
    Malformed(String),
    /// More events than `ingest_max_batch_events`.
    TooMany { got: usize, max: usize },
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

/// How deep arrays and objects may nest in an ingest body, counting every level from the
/// outermost (`[` of a batch is 1, an event's object 2, its `data` 3). Checked before any
/// parser sees the body, so no input can exhaust a thread's stack.
pub(crate) const MAX_DEPTH: usize = 64;

/// Stack of an ingest thread. sonic-rs walks nested values recursively; a level costs a few
/// hundred bytes in a release build and up to 50 KiB in a debug build, so [`MAX_DEPTH`]
/// levels need at most about 3.2 MiB. Only touched pages take memory.
pub(crate) const STACK_BYTES: usize = 16 << 20;

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Malformed(why) => write!(f, "{why}"),
            BatchError::TooMany { got, max } => write!(
                f,
                "{got} events in one batch; ingest_max_batch_events is {max}"
            ),
            BatchError::TooDeep => write!(
                f,
                "arrays and objects nest deeper than {MAX_DEPTH} levels (the limit for ingest \
                 bodies, counted from the outermost bracket)"
            ),
        }
    }
}

/// A parsed batch: its optional id (raw JSON, echoed back on the socket) and each element,
/// parsed or with the reason it could not be.
pub(crate) struct Batch<'a> {
    pub id: Option<Cow<'a, str>>,
    pub items: Vec<Result<Item<'a>, String>>,
}

/// Parses `[event, ...]`, or with `envelope`, also `{"id": <any JSON>, "events": [event, ...]}`
/// (the socket form, whose `id` is echoed in the answer). An element that is not a valid event
/// fails alone; the others stand.
pub(crate) fn parse(
    body: &[u8],
    max_events: usize,
    envelope: bool,
) -> Result<Batch<'_>, BatchError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Envelope<'a> {
        #[serde(borrow, default)]
        id: Option<LazyValue<'a>>,
        #[serde(borrow)]
        events: Vec<LazyValue<'a>>,
    }
    if crate::json::too_deep(body, MAX_DEPTH) {
        return Err(BatchError::TooDeep);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| BatchError::Malformed("the body is not UTF-8".into()))?;
    let first = text.trim_start().as_bytes().first().copied();
    let (id, elements): (Option<Cow<'_, str>>, Vec<LazyValue<'_>>) = match first {
        Some(b'[') => (
            None,
            sonic_rs::from_str(text).map_err(|e| malformed(&e, envelope))?,
        ),
        Some(b'{') if envelope => {
            let env: Envelope<'_> =
                sonic_rs::from_str(text).map_err(|e| malformed(&e, envelope))?;
            // The id's raw text lives in `text`; find it there so it outlives the envelope (a
            // lazy value may also hold a copy of its text: then the copy is kept).
            let id = env.id.map(|v| {
                let raw = v.as_raw_str();
                raw_within(text, raw).map_or_else(|| Cow::Owned(raw.to_owned()), Cow::Borrowed)
            });
            (id, env.events)
        }
        _ => return Err(malformed(&"expected a JSON array", envelope)),
    };
    if elements.len() > max_events {
        return Err(BatchError::TooMany {
            got: elements.len(),
            max: max_events,
        });
    }
    let items = elements
        .into_iter()
        .map(|raw| {
            // An element whose text is not a slice of the body cannot be an object (only
            // strings with escapes are copied): not an event.
            let s = raw_within(text, raw.as_raw_str())
                .ok_or_else(|| "invalid type: expected an event object".to_owned())?;
            let item = sonic_rs::from_str::<Item<'_>>(s).map_err(|e| {
                let msg = e.to_string();
                // sonic-rs appends the offending input; keep the first line.
                msg.lines().next().unwrap_or("invalid event").to_owned()
            })?;
            // `data` is passed to clients as it came: it must be valid JSON to the last escape
            // (sonic-rs skips over a lazy value without checking its string escapes).
            if let Some(d) = &item.data {
                valid_json(d.as_raw_str()).map_err(|e| format!("data is not valid JSON: {e}"))?;
            }
            Ok(item)
        })
        .collect();
    // The id is echoed in the answer as it came: the same check.
    if let Some(id) = &id {
        valid_json(id)
            .map_err(|e| BatchError::Malformed(format!("the batch's id is not valid JSON: {e}")))?;
    }
    Ok(Batch { id, items })
}

/// Checks that `raw` is one complete, valid JSON value (escapes included), without building it.
fn valid_json(raw: &str) -> Result<(), serde_json::Error> {
    serde_json::from_str::<serde::de::IgnoredAny>(raw).map(|_| ())
}

fn malformed(e: &dyn std::fmt::Display, envelope: bool) -> BatchError {
    let want = if envelope {
        "a JSON array of events, or {\"id\":..,\"events\":[..]}"
    } else {
        "a JSON array of events"
    };
    let e = e.to_string();
    let first = e.lines().next().unwrap_or_default();
    BatchError::Malformed(format!("expected {want}: {first}"))
}

/// `inner` re-borrowed from `outer`, so it lives as long as `outer` does, if it is a slice of
/// it (sonic-rs lazy values mostly borrow the input they were parsed from, but not always:
/// `None` then).
fn raw_within<'a>(outer: &'a str, inner: &str) -> Option<&'a str> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    let slice = outer.get(start..end)?;
    (slice.as_ptr() == inner.as_ptr()).then_some(slice)
}

/// Why one event of a batch was not accepted: a stable code for programs and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    /// The rejection for an event the emitter refused. `Full` here means the ring stayed full
    /// for `ingest_full_wait`: the publisher may send the event again.
    pub(crate) fn from_emit<T>(index: usize, e: &EmitError<T>) -> Rejection {
        let code = match e {
            EmitError::Full(_) => "full",
            EmitError::Closed(_) => "shutting_down",
            EmitError::TooLarge(_) => "too_large",
            EmitError::InvalidUser(_) => "invalid_user",
            EmitError::InvalidType(_) => "invalid_type",
            EmitError::Unserializable(_) => "invalid_data",
            EmitError::NoReceipt(_) => "full",
        };
        Rejection {
            index,
            code,
            message: e.to_string(),
        }
    }
}

/// The answer to a batch: `{"id":..,"accepted":N,"rejected":M,"errors":[{"index":i,"code":"..","message":".."}]}`
/// (`id` only when the batch had one).
pub(crate) fn outcome(id: Option<&str>, accepted: usize, errors: &[Rejection]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Err<'a> {
        index: usize,
        code: &'a str,
        message: &'a str,
    }
    let mut out = Vec::with_capacity(64 + errors.len() * 64);
    out.push(b'{');
    if let Some(id) = id {
        out.extend_from_slice(b"\"id\":");
        out.extend_from_slice(id.as_bytes());
        out.push(b',');
    }
    let errs: Vec<Err<'_>> = errors
        .iter()
        .map(|r| Err {
            index: r.index,
            code: r.code,
            message: &r.message,
        })
        .collect();
    out.extend_from_slice(
        format!(
            "\"accepted\":{accepted},\"rejected\":{},\"errors\":",
            errors.len()
        )
        .as_bytes(),
    );
    serde_json::to_writer(&mut out, &errs).expect("writing to a Vec");
    out.push(b'}');
    out
}

/// An error answer for a whole batch: `{"id":..,"error":"<code>","message":".."}`.
pub(crate) fn batch_error(id: Option<&str>, code: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + message.len());
    out.push(b'{');
    if let Some(id) = id {
        out.extend_from_slice(b"\"id\":");
        out.extend_from_slice(id.as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"error\":");
    serde_json::to_writer(&mut out, code).expect("writing to a Vec");
    out.extend_from_slice(b",\"message\":");
    serde_json::to_writer(&mut out, message).expect("writing to a Vec");
    out.push(b'}');
    out
}

/// The ingest rate limit, shared by every ingest connection: a generic cell rate algorithm
/// (GCRA) over one atomic, so checking a batch takes no lock. It admits `rate` events per
/// second on average and bursts of up to a tenth of a second's worth (or one full batch, if
/// that is more). Time is passed in (nanoseconds on any monotonic clock), so it is tested on
/// a virtual clock.
pub(crate) struct RateLimit {
    /// The theoretical arrival time: when the events admitted so far would all have been
    /// admitted at exactly `rate`.
    tat_ns: AtomicU64,
    rate: u64,
    /// How far ahead of `now` the theoretical arrival time may run.
    burst_ns: u64,
}

impl RateLimit {
    pub(crate) fn new(rate: u64, max_batch: usize) -> Self {
        let rate = rate.max(1);
        let batch_ns = cost_ns(max_batch as u64, rate);
        RateLimit {
            tat_ns: AtomicU64::new(0),
            rate,
            burst_ns: batch_ns.max(100_000_000),
        }
    }

    /// Admits `n` events at `now_ns`, or says how many nanoseconds to wait before the same
    /// batch would be admitted.
    pub(crate) fn admit(&self, n: usize, now_ns: u64) -> Result<(), u64> {
        let cost = cost_ns(n as u64, self.rate);
        // Relaxed load, AcqRel CAS: the cell is the only shared state and carries no other
        // data; the CAS makes concurrent batches take turns without losing a cost.
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now_ns);
            let new = start + cost;
            if new - now_ns > self.burst_ns {
                return Err(new - now_ns - self.burst_ns);
            }
            match self
                .tat_ns
                .compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// Nanoseconds `n` events take at `rate` per second, rounded up.
fn cost_ns(n: u64, rate: u64) -> u64 {
    ((u128::from(n) * 1_000_000_000).div_ceil(u128::from(rate))) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_escapes_in_data_or_the_id_never_reach_a_client_or_an_answer() {
        // Found by the ingest_batch fuzz target: sonic-rs skips lazy values without checking
        // string escapes, so they would have gone out as they came.
        let body = include_bytes!("../../fuzz/corpus/ingest_batch/regression-invalid-escape-in-id");
        let e = parse(body, 10, true).err().expect("refused whole");
        assert!(e.to_string().contains("id is not valid JSON"), "{e}");
        let body = br#"[{"user":"u","type":"t","data":{"x":"\u00zz"}},{"user":"u","type":"t","data":{"x":"\u00e9"}}]"#;
        let b = parse(body, 10, false).unwrap();
        let first = b.items[0].as_ref().expect_err("refused alone");
        assert!(first.contains("data is not valid JSON"), "{first}");
        assert!(b.items[1].is_ok());
    }

    #[test]
    fn an_envelope_id_with_escapes_is_echoed_as_sent() {
        // sonic-rs hands such a value back as a copy, not a slice of the body (found by the
        // ingest_batch fuzz target: the id's position was computed from it and panicked).
        let body = br#"{"id":"b-\"1","events":[{"user":"u","type":"t"},"a\"b"]}"#;
        let b = parse(body, 10, true).unwrap();
        assert_eq!(b.id.as_deref(), Some(r#""b-\"1""#));
        assert!(b.items[0].is_ok());
        assert!(b.items[1].is_err(), "a string is not an event");
        let out = outcome(b.id.as_deref(), 1, &[]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "b-\"1");
    }

    #[test]
    fn a_key_is_a_duplicate_within_its_window_only_and_per_user() {
        let t0 = std::time::Instant::now();
        let sec = std::time::Duration::from_secs(1);
        let mut d = Dedupe::new(10 * sec, 3);
        assert!(d.claim("u", "k1", t0));
        assert!(
            !d.claim("u", "k1", t0 + 9 * sec),
            "a retry within the window"
        );
        assert!(d.claim("v", "k1", t0), "another user's key space");
        assert!(d.claim("u", "k1", t0 + 10 * sec), "after the window");
        // Released claims (the emit failed) may be retried.
        assert!(d.claim("u", "k2", t0 + 10 * sec));
        d.release("u", "k2");
        assert!(d.claim("u", "k2", t0 + 10 * sec));
        // Bounded: past the capacity the oldest is forgotten early, and counted.
        assert!(d.claim("u", "k3", t0 + 10 * sec));
        assert!(d.claim("u", "k4", t0 + 10 * sec));
        assert!(d.evicted_early >= 1);
        assert!(d.order.len() <= 3 && d.seen.len() <= 3);
    }

    #[test]
    fn nesting_past_the_limit_is_refused_before_any_parser_sees_it() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        // Anywhere: the whole body, an event's data, the envelope's id.
        let bodies = [
            deep(20_000),
            format!(r#"[{{"user":"u","type":"t","data":{}}}]"#, deep(70)),
            format!(r#"{{"id":{},"events":[]}}"#, deep(20_000)),
        ];
        for body in &bodies {
            let err = parse(body.as_bytes(), 1000, true).err();
            assert_eq!(err, Some(BatchError::TooDeep), "{}", &body[..40]);
        }
        assert!(BatchError::TooDeep.to_string().contains("64 levels"));
        // At the limit it parses (the event's data may hold 61 levels inside the batch's 3),
        // on a thread with an ingest thread's stack.
        let ok = format!(r#"[{{"user":"u","type":"t","data":{{"x":{}}}}}]"#, deep(61));
        std::thread::Builder::new()
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let b = parse(ok.as_bytes(), 1000, false).expect("64 levels are fine");
                assert!(b.items[0].is_ok(), "{:?}", b.items[0].as_ref().err());
            })
            .unwrap()
            .join()
            .unwrap();
        // Brackets inside strings do not count, escaped quotes included.
        let s = format!(
            r#"[{{"user":"u","type":"t","data":"\"{}"}}]"#,
            "[".repeat(100)
        );
        assert!(parse(s.as_bytes(), 1000, false).unwrap().items[0].is_ok());
    }

    #[test]
    fn an_array_parses_each_event_on_its_own() {
        let body = br#"[
            {"user":"u1","type":"agent_started","run_id":"r1"},
            {"user":"u2","type":"tool_executing","data":{"tool":"grep","args":[1,2]}},
            {"user":"u3","typ":"x"},
            {"user":"u\"4","type":"my.custom","ack":true,"thread_id":"t"}
        ]"#;
        let b = parse(body, 10, false).unwrap();
        assert_eq!(b.id, None);
        assert_eq!(b.items.len(), 4);
        let first = b.items[0].as_ref().unwrap();
        assert_eq!(first.event_type(), EventType::AgentStarted);
        assert_eq!(first.run_id.as_deref(), Some("r1"));
        let second = b.items[1].as_ref().unwrap();
        assert_eq!(
            second.data.as_ref().unwrap().as_raw_str(),
            r#"{"tool":"grep","args":[1,2]}"#
        );
        let third = b.items[2].as_ref().unwrap_err();
        assert!(third.contains("typ"), "{third}");
        let fourth = b.items[3].as_ref().unwrap();
        assert_eq!(fourth.user, "u\"4");
        assert_eq!(fourth.event_type(), EventType::Custom("my.custom"));
        assert!(fourth.event().needs_ack());
    }

    #[test]
    fn the_socket_form_carries_an_id_that_is_echoed() {
        let body = br#"{"id":"b-17","events":[{"user":"u","type":"agent_started"}]}"#;
        let b = parse(body, 10, true).unwrap();
        assert_eq!(b.id.as_deref(), Some("\"b-17\""));
        assert_eq!(b.items.len(), 1);
        let out = outcome(b.id.as_deref(), 1, &[]);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"id":"b-17","accepted":1,"rejected":0,"errors":[]}"#
        );
        assert!(parse(body, 10, false).is_err(), "POST takes arrays only");
    }

    #[test]
    fn whole_batch_errors_name_the_problem() {
        assert!(matches!(
            parse(b"{\"user\":\"u\"}", 10, false),
            Err(BatchError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"[1,", 10, false),
            Err(BatchError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"\xff", 10, false),
            Err(BatchError::Malformed(_))
        ));
        let three = br#"[{"user":"a","type":"t"},{"user":"a","type":"t"},{"user":"a","type":"t"}]"#;
        assert_eq!(
            parse(three, 2, false).err(),
            Some(BatchError::TooMany { got: 3, max: 2 })
        );
        let msg = BatchError::TooMany { got: 3, max: 2 }.to_string();
        assert!(msg.contains("ingest_max_batch_events"), "{msg}");
    }

    #[test]
    fn outcomes_list_each_rejected_index() {
        let errs = [Rejection {
            index: 2,
            code: "invalid_user",
            message: "the user id is \"empty\"".into(),
        }];
        let out = outcome(None, 4, &errs);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["accepted"], 4);
        assert_eq!(v["rejected"], 1);
        assert_eq!(v["errors"][0]["index"], 2);
        assert_eq!(v["errors"][0]["code"], "invalid_user");
        let e: serde_json::Value =
            serde_json::from_slice(&batch_error(Some("7"), "rate_limited", "slow down")).unwrap();
        assert_eq!(e["id"], 7);
        assert_eq!(e["error"], "rate_limited");
    }

    #[test]
    fn the_rate_limit_admits_the_rate_and_a_bounded_burst() {
        // 1000 events/s: a burst of 100 ms = 100 events, then one event per millisecond.
        let rl = RateLimit::new(1000, 10);
        let t0 = 5_000_000_000u64;
        assert_eq!(rl.admit(100, t0), Ok(()));
        let wait = rl.admit(1, t0).unwrap_err();
        assert_eq!(wait, 1_000_000, "one event's worth of time");
        assert_eq!(rl.admit(1, t0 + 1_000_000), Ok(()));
        // Over ten virtual seconds, sending as fast as allowed admits the rate, no more.
        let mut admitted = 0u64;
        let mut now = t0 + 1_000_000;
        while now < t0 + 10_000_000_000 {
            match rl.admit(10, now) {
                Ok(()) => admitted += 10,
                Err(wait) => now += wait,
            }
        }
        assert!((9_900..=10_010).contains(&admitted), "{admitted}");
        // A batch larger than the burst can never pass: the caller must split it.
        assert!(RateLimit::new(10, 5).admit(6, t0).is_err());
        // A batch as large as ingest_max_batch_events always can, given time.
        let big = RateLimit::new(10, 50);
        assert_eq!(big.admit(50, t0), Ok(()));
    }
}
