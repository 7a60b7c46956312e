//! Events and their wire encoding.
//!
//! An [`Event`] borrows everything it carries, so building one allocates nothing and handing it
//! back in an error ([`EmitError::Full`](crate::EmitError::Full)) is free. The emitter encodes it
//! on the emitting thread, into a reused buffer, as the *body* of the JSON frame: every member
//! except `seq`, which the reactor assigns and writes in front (see [`crate::core::frame`]).

use serde::Serialize;

/// The longest accepted event type name, in bytes.
pub const MAX_TYPE_LEN: usize = 64;
/// Type names of the protocol's own frames and messages, refused as custom event types.
pub const RESERVED_TYPES: [&str; 5] = ["hello", "gap", "redelivery", "auth", "error"];

/// The type of an event: the five agent lifecycle types, or a custom name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType<'a> {
    /// `agent_started`: a run began.
    AgentStarted,
    /// `agent_thinking`: the agent produced intermediate output (often a text delta).
    AgentThinking,
    /// `tool_executing`: the agent called a tool.
    ToolExecuting,
    /// `tool_completed`: a tool call returned.
    ToolCompleted,
    /// `agent_completed`: a run finished.
    AgentCompleted,
    /// Any other type. The name must be 1 to [`MAX_TYPE_LEN`] bytes of `[A-Za-z0-9_.:-]`.
    Custom(&'a str),
}

impl<'a> EventType<'a> {
    /// The name written in the frame's `type` member.
    pub fn as_str(&self) -> &'a str {
        match self {
            EventType::AgentStarted => "agent_started",
            EventType::AgentThinking => "agent_thinking",
            EventType::ToolExecuting => "tool_executing",
            EventType::ToolCompleted => "tool_completed",
            EventType::AgentCompleted => "agent_completed",
            EventType::Custom(name) => name,
        }
    }

    /// Whether the name is acceptable (always true for the built-in types). A custom name
    /// may not be one of the protocol's own frame types ([`RESERVED_TYPES`]), so a client
    /// never takes an application's event for a `hello` or a `gap`.
    pub fn is_valid(&self) -> bool {
        match self {
            EventType::Custom(name) => {
                !RESERVED_TYPES.contains(name)
                    && !name.is_empty()
                    && name.len() <= MAX_TYPE_LEN
                    && name.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
                    })
            }
            _ => true,
        }
    }
}

/// Marker for an event without a `data` member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct NoData;

/// One event for one user. Cheap to build: it only borrows.
///
/// ```
/// use floodgate::Event;
/// let data = serde_json::json!({"tool": "search", "query": "rust mio"});
/// let ev = Event::tool_executing("run-1", &data).thread("t-9");
/// assert_eq!(ev.event_type().as_str(), "tool_executing");
/// ```
pub struct Event<'a, D: ?Sized = NoData> {
    kind: EventType<'a>,
    run_id: Option<&'a str>,
    thread_id: Option<&'a str>,
    data: Option<&'a D>,
    /// Whether clients must ack it; `None` = the type's default (only `agent_completed`).
    ack: Option<bool>,
}

// Manual impls: `D` itself need not be Debug, Clone or Copy; only the reference is copied, and
// `unwrap()` on an emit result must not require the user's data type to implement Debug.
impl<D: ?Sized> std::fmt::Debug for Event<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("type", &self.kind.as_str())
            .field("run_id", &self.run_id)
            .field("thread_id", &self.thread_id)
            .field("has_data", &self.data.is_some())
            .field("needs_ack", &self.needs_ack())
            .finish()
    }
}

impl<D: ?Sized> Clone for Event<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D: ?Sized> Copy for Event<'_, D> {}

impl<'a> Event<'a, NoData> {
    /// An event of the given type with no run, thread or data.
    pub fn new(kind: EventType<'a>) -> Self {
        Event {
            kind,
            run_id: None,
            thread_id: None,
            data: None,
            ack: None,
        }
    }

    /// `agent_started` for a run.
    pub fn agent_started(run_id: &'a str) -> Self {
        Event::new(EventType::AgentStarted).run(run_id)
    }
}

impl<'a, D: ?Sized> Event<'a, D> {
    /// A custom event type with data.
    pub fn custom(name: &'a str, data: &'a D) -> Self {
        Event {
            kind: EventType::Custom(name),
            run_id: None,
            thread_id: None,
            data: Some(data),
            ack: None,
        }
    }

    /// `agent_thinking` for a run, with data (for example `{"delta": "..."}`).
    pub fn agent_thinking(run_id: &'a str, data: &'a D) -> Self {
        Event::with(EventType::AgentThinking, run_id, data)
    }

    /// `tool_executing` for a run, with data (for example the tool name and arguments).
    pub fn tool_executing(run_id: &'a str, data: &'a D) -> Self {
        Event::with(EventType::ToolExecuting, run_id, data)
    }

    /// `tool_completed` for a run, with data (for example the tool's result).
    pub fn tool_completed(run_id: &'a str, data: &'a D) -> Self {
        Event::with(EventType::ToolCompleted, run_id, data)
    }

    /// `agent_completed` for a run, with data (for example the final answer).
    pub fn agent_completed(run_id: &'a str, data: &'a D) -> Self {
        Event::with(EventType::AgentCompleted, run_id, data)
    }

    /// An event of any type for a run, with data.
    pub fn with(kind: EventType<'a>, run_id: &'a str, data: &'a D) -> Self {
        Event {
            kind,
            run_id: Some(run_id),
            thread_id: None,
            data: Some(data),
            ack: None,
        }
    }

    /// Sets `run_id`.
    pub fn run(mut self, run_id: &'a str) -> Self {
        self.run_id = Some(run_id);
        self
    }

    /// Sets `thread_id`.
    pub fn thread(mut self, thread_id: &'a str) -> Self {
        self.thread_id = Some(thread_id);
        self
    }

    /// Asks clients to confirm this event with a cumulative `{"ack":<seq>}`. Until one does,
    /// the gateway keeps it (whatever the history limits) and sends it again to every
    /// connection of the user that starts; after `ack_timeout` it goes to the dead-letter file.
    /// `agent_completed` needs an ack by default; every other type does not.
    pub fn require_ack(mut self) -> Self {
        self.ack = Some(true);
        self
    }

    /// Delivers this event without asking for an ack (also for `agent_completed`).
    pub fn no_ack(mut self) -> Self {
        self.ack = Some(false);
        self
    }

    /// Whether clients must ack this event (see [`require_ack`](Self::require_ack)).
    pub fn needs_ack(&self) -> bool {
        self.ack
            .unwrap_or(matches!(self.kind, EventType::AgentCompleted))
    }

    /// The event's type.
    pub fn event_type(&self) -> EventType<'a> {
        self.kind
    }

    /// The event's `run_id`, if any.
    pub fn run_id(&self) -> Option<&'a str> {
        self.run_id
    }

    /// The event's `thread_id`, if any.
    pub fn thread_id(&self) -> Option<&'a str> {
        self.thread_id
    }

    /// The event's data, if any.
    pub fn data(&self) -> Option<&'a D> {
        self.data
    }
}

impl<'a, D: ?Sized> Event<'a, D> {
    /// An event from its parts (the ingest API builds events from parsed JSON).
    pub(crate) fn from_parts(
        kind: EventType<'a>,
        run_id: Option<&'a str>,
        thread_id: Option<&'a str>,
        data: Option<&'a D>,
        ack: Option<bool>,
    ) -> Self {
        Event {
            kind,
            run_id,
            thread_id,
            data,
            ack,
        }
    }
}

impl<D: Serialize + ?Sized> Event<'_, D> {
    /// Appends the frame body for this event to `out`: the JSON object's members after `seq`,
    /// then the closing brace, i.e. `"type":"..","ts":N[,"ack":true][,"run_id":".."][,"thread_id":".."][,"data":..]}`.
    ///
    /// Fails only if `data`'s `Serialize` impl fails; `out` may then hold a partial body.
    pub(crate) fn encode_body(&self, ts_unix_ns: u64, out: &mut Vec<u8>) -> Result<(), ()> {
        out.extend_from_slice(b"\"type\":");
        write_json_str(out, self.kind.as_str())?;
        out.extend_from_slice(b",\"ts\":");
        out.extend_from_slice(itoa::Buffer::new().format(ts_unix_ns).as_bytes());
        if self.needs_ack() {
            out.extend_from_slice(b",\"ack\":true");
        }
        if let Some(run) = self.run_id {
            out.extend_from_slice(b",\"run_id\":");
            write_json_str(out, run)?;
        }
        if let Some(thread) = self.thread_id {
            out.extend_from_slice(b",\"thread_id\":");
            write_json_str(out, thread)?;
        }
        if let Some(data) = self.data {
            out.extend_from_slice(b",\"data\":");
            // sonic-rs: a serde serializer with SIMD string escaping. 8x faster than serde_json
            // on 2 KiB of text, a few ns slower on short payloads; simd-json's serializer is
            // never ahead of it (perf/2026-12-01-serializers.md, benches/encode.rs).
            sonic_rs::to_writer(&mut *out, data).map_err(|_| ())?;
        }
        out.push(b'}');
        Ok(())
    }
}

/// Writes `s` as a JSON string. Most names need no escaping: check that with a branch-free scan
/// the compiler vectorises, and fall back to serde_json's escaper otherwise.
fn write_json_str(out: &mut Vec<u8>, s: &str) -> Result<(), ()> {
    let needs_escape = s.bytes().fold(false, |acc, b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        return serde_json::to_writer(out, s).map_err(|_| ());
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body<D: Serialize + ?Sized>(ev: Event<'_, D>) -> String {
        let mut out = Vec::new();
        ev.encode_body(42, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn body_completes_a_json_object_after_seq() {
        let data = serde_json::json!({"delta": "he said \"hi\"\n"});
        let text = body(Event::agent_thinking("r1", &data).thread("t1"));
        let full = format!("{{\"seq\":7,{text}");
        let v: serde_json::Value = serde_json::from_str(&full).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["type"], "agent_thinking");
        assert_eq!(v["ts"], 42);
        assert_eq!(v["run_id"], "r1");
        assert_eq!(v["thread_id"], "t1");
        assert_eq!(v["data"]["delta"], "he said \"hi\"\n");
    }

    #[test]
    fn strings_are_escaped_only_when_needed() {
        for s in [
            "plain",
            "",
            "quote\"",
            "back\\slash",
            "nl\n",
            "\u{1}",
            "caf\u{e9}",
        ] {
            let mut out = Vec::new();
            write_json_str(&mut out, s).unwrap();
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn absent_members_are_omitted() {
        let text = body(Event::new(EventType::Custom("ping.me")));
        assert_eq!(text, r#""type":"ping.me","ts":42}"#);
        let text = body(Event::agent_started("r"));
        assert_eq!(text, r#""type":"agent_started","ts":42,"run_id":"r"}"#);
    }

    #[test]
    fn agent_completed_asks_for_an_ack_unless_told_otherwise() {
        let data = serde_json::json!(1);
        assert!(Event::agent_completed("r", &data).needs_ack());
        assert!(!Event::agent_completed("r", &data).no_ack().needs_ack());
        assert!(!Event::agent_thinking("r", &data).needs_ack());
        let custom = Event::custom("invoice", &data).require_ack();
        assert_eq!(
            body(custom),
            r#""type":"invoice","ts":42,"ack":true,"data":1}"#
        );
    }

    #[test]
    fn custom_type_names_are_checked() {
        assert!(EventType::Custom("progress").is_valid());
        assert!(EventType::Custom("a.b:c-d_e").is_valid());
        assert!(!EventType::Custom("").is_valid());
        assert!(!EventType::Custom("has space").is_valid());
        assert!(!EventType::Custom("quote\"").is_valid());
        assert!(!EventType::Custom(&"x".repeat(MAX_TYPE_LEN + 1)).is_valid());
        for reserved in RESERVED_TYPES {
            assert!(!EventType::Custom(reserved).is_valid(), "{reserved}");
        }
        assert!(EventType::Custom("hello_world").is_valid());
    }
}
