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

/// How an `agent_thinking` body starts (the emitter writes `type` first).
pub(crate) const THINKING: &[u8] = b"\"type\":\"agent_thinking\"";

/// The last frame of a connection's buffer, if it is an `agent_thinking` frame that may absorb
/// the next one: its byte range in `Conn::out`. Valid only while `out.len() == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tail {
    pub start: usize,
    pub end: usize,
}

/// Values nested deeper than this in either event keep the two apart (the lookups below walk
/// nested values; a reactor thread's stack is not an ingest thread's).
const MAX_DEPTH: usize = 32;

/// The body (everything after the `{"seq":N,` prefix) of the frame that replaces the frame
/// whose payload is `old` and the event whose body is `new`, or `None` if they must stay
/// apart. The result is the new event's own bytes with two changes: `"coalesced":k` after its
/// `ts`, and its `data.delta` string replaced by the two deltas joined. Every other byte (key
/// order, numbers of any size, spacing) is the application's, untouched.
pub(crate) fn merge(old: &[u8], new: &[u8]) -> Option<Vec<u8>> {
    if crate::json::too_deep(old, MAX_DEPTH) || crate::json::too_deep(new, MAX_DEPTH) {
        return None;
    }
    let old = std::str::from_utf8(old).ok()?;
    let mut whole = String::with_capacity(new.len() + 1);
    whole.push('{');
    whole.push_str(std::str::from_utf8(new).ok()?);
    let new_s = whole.as_str();
    let raw = |json: &str, path: &[&str]| -> Option<String> {
        sonic_rs::get(json, path)
            .ok()
            .map(|v| v.as_raw_str().to_owned())
    };
    for e in [old, new_s] {
        if raw(e, &["type"])? != "\"agent_thinking\"" || raw(e, &["ack"]).is_some() {
            return None;
        }
    }
    if raw(old, &["run_id"])? != raw(new_s, &["run_id"])?
        || raw(old, &["thread_id"]) != raw(new_s, &["thread_id"])
    {
        return None;
    }
    let a: String = serde_json::from_str(&raw(old, &["data", "delta"])?).ok()?;
    let b_lazy = sonic_rs::get(new_s, &["data", "delta"]).ok()?;
    let b_raw = b_lazy.as_raw_str();
    let b: String = serde_json::from_str(b_raw).ok()?;
    // Where the new delta's text lies in `new` (the lookup borrows from its input).
    let start = (b_raw.as_ptr() as usize).checked_sub(new_s.as_ptr() as usize)?;
    let end = start + b_raw.len();
    if end > new_s.len() || &new_s[start..end] != b_raw {
        return None;
    }
    // `"type":"agent_thinking","ts":<digits>`: the emitter writes these first.
    let after_ts = new_s[1..]
        .strip_prefix("\"type\":\"agent_thinking\",\"ts\":")
        .map(|rest| {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            new_s.len() - rest.len() + digits
        })?;
    let k = first_covered_count(old.as_bytes()) + 1;
    let joined = serde_json::to_string(&format!("{a}{b}")).ok()?;
    let mut body = Vec::with_capacity(new_s.len() + joined.len() + 20);
    let new_b = new_s.as_bytes();
    body.extend_from_slice(&new_b[1..after_ts]);
    body.extend_from_slice(format!(",\"coalesced\":{k}").as_bytes());
    body.extend_from_slice(&new_b[after_ts..start]);
    body.extend_from_slice(joined.as_bytes());
    body.extend_from_slice(&new_b[end..]);
    Some(body)
}

/// How many events the frame with payload `payload` stands for (its `coalesced`, else 1).
fn first_covered_count(payload: &[u8]) -> u64 {
    let Some(at) = memchr::memmem::find(payload, b",\"coalesced\":") else {
        return 1;
    };
    let digits = &payload[at + 13..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end])
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// The first `seq` an event frame stands for: its `seq`, or `seq - coalesced + 1`.
pub(crate) fn first_covered(payload: &[u8], seq: u64) -> u64 {
    seq + 1 - first_covered_count(payload).clamp(1, seq.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn thinking(run: &str, delta: &str) -> Vec<u8> {
        let data = serde_json::json!({ "delta": delta, "step": 1 });
        let mut out = Vec::new();
        crate::event::Event::agent_thinking(run, &data)
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
            crate::event::Event::tool_executing("r", &data),
            crate::event::Event::agent_thinking("r", &data).require_ack(),
            crate::event::Event::agent_thinking("r", &data).thread("t"),
        ] {
            let mut body = Vec::new();
            ev.encode_body(1, &mut body).unwrap();
            assert!(merge(&old, &body).is_none(), "{ev:?}");
        }
        let numeric = serde_json::json!({ "delta": 3 });
        let mut body = Vec::new();
        crate::event::Event::agent_thinking("r", &numeric)
            .encode_body(1, &mut body)
            .unwrap();
        assert!(merge(&old, &body).is_none());
    }

    #[test]
    fn the_merged_frame_keeps_the_applications_bytes() {
        // Numbers beyond f64, key order, and other members stay exactly as emitted.
        let raw = br#""type":"agent_thinking","ts":9,"run_id":"r","data":{"z":123456789012345678901234567890,"delta":"lo \"x\"","a":[1.50,2e3]}}"#;
        let old = payload(4, &thinking("r", "Hel"));
        let merged = merge(&old, raw).unwrap();
        assert_eq!(
            std::str::from_utf8(&merged).unwrap(),
            r#""type":"agent_thinking","ts":9,"coalesced":2,"run_id":"r","data":{"z":123456789012345678901234567890,"delta":"Hello \"x\"","a":[1.50,2e3]}}"#
        );
        // Deeply nested data is left alone rather than walked on a reactor's stack.
        let deep = format!(
            r#""type":"agent_thinking","ts":9,"run_id":"r","data":{{"delta":"x","n":{}{}}}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert!(merge(&old, deep.as_bytes()).is_none());
    }
}
