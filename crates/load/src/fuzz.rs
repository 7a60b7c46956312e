//! The fuzz target for what the load client parses from a server it measures (any server,
//! trusted or not): frames out of the read buffer, then JSON members by pointer. Run by
//! floodgate's fuzzing (`scripts/fuzz server_frames`, and on stable by
//! `tests/fuzz_targets_survive_any_input.rs`) beside the gateway's own targets.

use floodgate_wsclient::{FrameReader, Kind};

use crate::pointer::{f64_of, u64_of, Fields, Pointer};

/// Bytes as a server might send them after the handshake: the first byte picks how the rest is
/// cut into reads; every frame the reader yields goes through the pointer readers. Panics only
/// on a broken promise: a frame longer than its input, or one-pass reading of top-level
/// members disagreeing with reading each member on its own for a frame that is valid JSON.
pub fn server_frames(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(first).max(1);
    let top: [Option<Pointer>; 3] =
        ["/seq", "/ts", "/a_long_key_name"].map(|p| Pointer::parse(p).ok());
    let nested = ["/data/t", "/1", "/seq"].map(|p| Pointer::parse(p).ok());
    let (fields, nested_fields) = (Fields::new(top.clone()), Fields::new(nested));
    let mut reader = FrameReader::new(Vec::new(), 1024);
    let mut fed = 0;
    for piece in rest.chunks(step) {
        let mut src = piece;
        while !src.is_empty() {
            if reader.fill(&mut src).is_err() {
                return;
            }
        }
        fed += piece.len();
        let result = reader.frames(|kind, payload| {
            assert!(payload.len() <= fed, "a frame longer than the bytes read");
            if kind != Kind::Text && kind != Kind::Binary {
                return;
            }
            let raws = fields.raw(payload);
            for raw in raws.into_iter().chain(nested_fields.raw(payload)).flatten() {
                let _ = (u64_of(raw), f64_of(raw));
            }
            if serde_json::from_slice::<serde_json::Value>(payload).is_ok() {
                for (k, p) in top.iter().enumerate() {
                    let alone = p.as_ref().and_then(|p| p.find(payload));
                    assert_eq!(raws[k], alone, "one pass and one by one disagree");
                }
            }
        });
        if result.is_err() {
            return;
        }
    }
}
