//! Fuzz targets: every parser that sees bytes from outside, each as a function of one byte
//! slice that must not panic, hang or allocate without bound, whatever the bytes. The same
//! functions run under libFuzzer (`fuzz/`, `cargo +nightly fuzz run <target>`) and, on stable,
//! under `tests/fuzz_targets_survive_any_input.rs`, which replays the corpus in
//! `fuzz/corpus/<target>/` and random mutations of it; `scripts/fuzz` runs whichever is here.
//!
//! Where a target can check more than "no panic" it does: records re-encode to the same bytes,
//! answers are valid JSON, a connection's buffer stays within its bound.

use std::time::{Duration, Instant};

use crate::config::{Config, JwtKey};
use crate::core::durable;
use crate::core::handshake::KeyCheck;
use crate::core::handshake::{self, OriginPolicy};
use crate::core::{Boards, ConnKind, Core, Start};

/// A fuzz target: one input, no result; it panics when something is wrong.
pub type Target = fn(&[u8]);

/// Every target, by name (the names of `fuzz/fuzz_targets/*.rs` and of the corpus folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("http_head", http_head),
    ("cursor", cursor),
    ("client_frames", client_frames),
    ("ingest_batch", ingest_batch),
    ("spool_record", spool_record),
    ("spool_recovery", spool_recovery),
    ("config_file", config_file),
    ("jwt", jwt),
    ("jwks", jwks),
    #[cfg(feature = "redis")]
    ("redis_batch", redis_batch),
];

/// A request head from a client: the parser, then the decision (with and without an origin
/// policy, tokens accepted or not), and the ingest endpoints' own head parser.
pub fn http_head(data: &[u8]) {
    let origins = OriginPolicy::new(&[
        "https://app.example.com".into(),
        "https://*.example.org".into(),
    ])
    .expect("valid");
    if let Ok(Some(req)) = handshake::parse(data) {
        assert!(req.head_len <= data.len());
        for (policy, ok) in [(&OriginPolicy::default(), true), (&origins, false)] {
            let optional = handshake::Optional {
                echo: ok,
                dashboard: ok,
            };
            let d = handshake::decide(
                &req,
                optional,
                policy,
                |t| match t {
                    Some(t) if ok && !t.is_empty() => Ok(t.as_bytes().into()),
                    _ => Err("bad token"),
                },
                |k| match k {
                    Some(_) if ok => KeyCheck::Valid,
                    _ => KeyCheck::Invalid,
                },
            );
            let _ = format!("{d:?}");
        }
    }
    crate::ingest::fuzz_post_head(data);
}

/// A resume cursor: as a first message (`resume=message`) and in a query string.
pub fn cursor(data: &[u8]) {
    let _ = handshake::parse_cursor_message(data);
    if let Ok(q) = std::str::from_utf8(data) {
        if !q.contains([' ', '\r', '\n']) {
            let head = format!("GET /ws?{q} HTTP/1.1\r\nHost: x\r\n\r\n");
            let _ = handshake::parse(head.as_bytes());
        }
    }
}

/// A core with small limits, a user connection and an echo connection.
fn small_core() -> Core {
    let mut c = Config::defaults(JwtKey::Hs256(vec![0; 32]));
    c.shards = 1;
    c.max_event_bytes = 4096;
    c.max_outbound_bytes = 64 << 10;
    c.max_frame_size = 4096;
    c.max_message_size = 16 << 10;
    c.echo = true;
    c.history_max_bytes = 64 << 10;
    c.history_total_bytes = 256 << 10;
    c.receipt_capacity = 16;
    c.validate().expect("valid");
    Core::new(c.core(), Boards::new(c.receipt_capacity), Instant::now())
}

/// Bytes from a client on an open connection: frames of any kind, fragmented or not, masked or
/// not, and the messages in them (acks, cursors, `auth`). The client reads nothing, so its
/// buffer must stay within `max_outbound_bytes` plus the closing slack.
pub fn client_frames(data: &[u8]) {
    let t0 = Instant::now();
    let mut core = small_core();
    let user = core
        .adopt(ConnKind::User(b"u"[..].into()), b"", b"", None, t0)
        .expect("adopts");
    let resume_msg = core
        .adopt_start(
            ConnKind::User(b"v"[..].into()),
            b"",
            b"",
            Start::AwaitCursor,
            t0,
        )
        .expect("adopts");
    let echo = core
        .adopt(ConnKind::Echo, b"", b"", None, t0)
        .expect("adopts");
    // The first byte picks how the input is cut into reads.
    let (cut, rest) = data
        .split_first()
        .map_or((1, data), |(c, r)| (*c as usize + 1, r));
    for chunk in rest.chunks(cut) {
        for id in [user, resume_msg, echo] {
            if core.connection_count() > 0 && core.conn_ids().contains(&id) {
                core.on_input(id, chunk, t0);
            }
        }
        for (id, _token) in core.take_auth_requests() {
            core.on_reauth(id, Err("fuzz"), t0);
        }
    }
    core.tick(t0 + Duration::from_secs(11));
    for id in core.conn_ids() {
        let c = core.conn(id);
        assert!(
            c.out().len() <= (64 << 10) + (64 << 10) + 8192,
            "{} bytes queued",
            c.out().len()
        );
    }
}

/// A batch from a publisher, as an HTTP body and as a socket message; every accepted event is
/// encoded as the emitter would, and the answer is JSON.
pub fn ingest_batch(data: &[u8]) {
    for envelope in [false, true] {
        crate::ingest::fuzz_batch(data, envelope);
    }
}

/// One spool record: decodes or is refused, and what decodes encodes to the same bytes.
pub fn spool_record(data: &[u8]) {
    if let Ok((r, len)) = durable::decode(data) {
        let mut again = Vec::new();
        let n = durable::encode(&mut again, &r, &[r.frame]);
        assert_eq!(n, len);
        assert_eq!(&again[..], &data[..len], "a record re-encodes to its bytes");
    }
    let _ = durable::decode_for(data, b"u");
}

/// A damaged spool directory: the bytes become a shard's segment (cut in two at a point the
/// first bytes choose), and opening it recovers a prefix in order or refuses with an error;
/// what it recovered can be scanned.
pub fn spool_recovery(data: &[u8]) {
    crate::spool::fuzz_recovery(data);
}

/// A batch message as a node's Redis subscription delivers it (any publisher on the channel
/// can send one): it is refused or read whole, and what is read writes back to its bytes.
#[cfg(feature = "redis")]
pub fn redis_batch(data: &[u8]) {
    use crate::redis_engine::wire;
    if let Ok(events) = wire::decode(data) {
        let mut again = Vec::new();
        wire::encode(&mut again, &events);
        assert_eq!(again, data, "a batch re-encodes to its bytes");
    }
}

/// A config file: TOML into settings, applied and validated like `--config`.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = toml::from_str::<crate::config::Settings>(text) {
        let _ = crate::gateway::Gateway::builder().settings(s).validate();
    }
}

/// A JSON Web Key Set as a file or an identity provider's URL serves it: refused, or at least
/// one and at most `MAX_KEYS` usable keys, found by their `kid`.
pub fn jwks(data: &[u8]) {
    if let Ok(keys) = crate::jwks::parse(data) {
        assert!((1..=crate::jwks::MAX_KEYS).contains(&keys.len()));
        let _ = keys.find(None);
        let _ = keys.find(Some("a"));
    }
}

/// A token as a client sends it (header, query or `auth` message).
pub fn jwt(data: &[u8]) {
    thread_local! {
        static V: crate::auth::Verifier =
            crate::auth::Verifier::new(&JwtKey::Hs256(vec![7; 32]), Duration::from_secs(30))
                .expect("a verifier")
                .with_claims(Some("aud"), Some("iss"));
    }
    if let Ok(t) = std::str::from_utf8(data) {
        V.with(|v| {
            let _ = v.verify_until(Some(t));
        });
    }
}
