//! Coalescing `agent_thinking` deltas for a connection that is falling behind.
//!
//! When a connection's unsent bytes are over the high-water mark and the last frame queued on
//! it (not yet started on the socket) is an `agent_thinking` event of the same run as the one
//! being routed, the two become one frame: the new event's `seq`, `ts` and data, with
//! `data.delta` the two deltas joined, and `"coalesced": k` saying that the frame stands for
//! the `k` events `seq - k + 1 ..= seq`. Only events whose `data.delta` is a string, of the same
//! `run_id` and `thread_id`, and that need no ack are merged; every other event (lifecycle
//! events above all) is queued as it is. History keeps every event apart, so a replay sends
//! them one by one. This is the slow path: nothing here runs while a connection keeps up.

use serde_json::{Map, Value};

/// How an `agent_thinking` body starts (the emitter writes `type` first).
pub(crate) const THINKING: &[u8] = b"\"type\":\"agent_thinking\"";

/// The last frame of a connection's buffer, if it is an `agent_thinking` frame that may absorb
/// the next one: its byte range in `Conn::out`. Valid only while `out.len() == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tail {
    pub start: usize,
    pub end: usize,
}

/// The body (everything after the `{"seq":N,` prefix) of the frame that replaces the frame
/// whose payload is `old` and the event whose body is `new`, or `None` if they must stay
/// apart.
pub(crate) fn merge(old: &[u8], new: &[u8]) -> Option<Vec<u8>> {
    let old: Map<String, Value> = serde_json::from_slice(old).ok()?;
    let mut whole = Vec::with_capacity(new.len() + 1);
    whole.push(b'{');
    whole.extend_from_slice(new);
    let new: Map<String, Value> = serde_json::from_slice(&whole).ok()?;
    for e in [&old, &new] {
        if e.get("type")?.as_str()? != "agent_thinking" || e.contains_key("ack") {
            return None;
        }
    }
    let run = new.get("run_id")?;
    if old.get("run_id")? != run || old.get("thread_id") != new.get("thread_id") {
        return None;
    }
    let (Some(Value::String(a)), Some(Value::Object(data))) =
        (old.get("data")?.as_object()?.get("delta"), new.get("data"))
    else {
        return None;
    };
    let Some(Value::String(b)) = data.get("delta") else {
        return None;
    };
    let mut data = data.clone();
    data.insert("delta".into(), Value::String(format!("{a}{b}")));
    let k = old.get("coalesced").and_then(Value::as_u64).unwrap_or(1) + 1;
    let mut body = Vec::with_capacity(whole.len() + a.len() + 24);
    body.extend_from_slice(b"\"type\":\"agent_thinking\",\"ts\":");
    serde_json::to_writer(&mut body, new.get("ts")?).ok()?;
    body.extend_from_slice(format!(",\"coalesced\":{k},\"run_id\":").as_bytes());
    serde_json::to_writer(&mut body, run).ok()?;
    if let Some(t) = new.get("thread_id") {
        body.extend_from_slice(b",\"thread_id\":");
        serde_json::to_writer(&mut body, t).ok()?;
    }
    body.extend_from_slice(b",\"data\":");
    serde_json::to_writer(&mut body, &data).ok()?;
    body.push(b'}');
    Some(body)
}

/// The first `seq` an event frame stands for: its `seq`, or `seq - coalesced + 1`.
pub(crate) fn first_covered(payload: &[u8], seq: u64) -> u64 {
    let Some(at) = memchr::memmem::find(payload, b",\"coalesced\":") else {
        return seq;
    };
    let digits = &payload[at + 13..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    let k: u64 = std::str::from_utf8(&digits[..end])
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(1);
    seq + 1 - k.clamp(1, seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thinking(run: &str, delta: &str) -> Vec<u8> {
        let data = serde_json::json!({ "delta": delta, "step": 1 });
        let mut out = Vec::new();
        crate::Event::agent_thinking(run, &data)
            .encode_body(7, &mut out)
            .unwrap();
        out
    }

    fn payload(seq: u64, body: &[u8]) -> Vec<u8> {
        let mut p = format!("{{\"seq\":{seq},").into_bytes();
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn deltas_of_one_run_join_and_the_frame_says_how_many_it_holds() {
        let first = thinking("r", "Hel");
        assert!(first.starts_with(THINKING));
        let merged = merge(&payload(4, &first), &thinking("r", "lo")).unwrap();
        let again = merge(&payload(5, &merged), &thinking("r", "!")).unwrap();
        let v: Value = serde_json::from_slice(&payload(6, &again)).unwrap();
        assert_eq!(v["seq"], 6);
        assert_eq!(v["coalesced"], 3);
        assert_eq!(v["data"]["delta"], "Hello!");
        assert_eq!(v["data"]["step"], 1);
        assert_eq!(v["run_id"], "r");
        assert_eq!(first_covered(&payload(6, &again), 6), 4);
        assert_eq!(first_covered(&payload(6, &first), 6), 6, "a plain frame");
    }

    #[test]
    fn other_runs_types_acks_and_non_string_deltas_stay_apart() {
        let old = payload(1, &thinking("r", "a"));
        assert!(merge(&old, &thinking("other", "b")).is_none());
        let data = serde_json::json!({ "delta": "b" });
        for ev in [
            crate::Event::tool_executing("r", &data),
            crate::Event::agent_thinking("r", &data).require_ack(),
            crate::Event::agent_thinking("r", &data).thread("t"),
        ] {
            let mut body = Vec::new();
            ev.encode_body(1, &mut body).unwrap();
            assert!(merge(&old, &body).is_none(), "{ev:?}");
        }
        let numeric = serde_json::json!({ "delta": 3 });
        let mut body = Vec::new();
        crate::Event::agent_thinking("r", &numeric)
            .encode_body(1, &mut body)
            .unwrap();
        assert!(merge(&old, &body).is_none());
    }
}
