//! Every class of bad token gets HTTP 401 before any upgrade; good tokens for each supported
//! algorithm are accepted.
mod util;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn status_of(addr: std::net::SocketAddr, request: &str) -> String {
    let resp = util::http(addr, request);
    resp.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn bad_tokens_get_401_and_no_upgrade() {
    let gw = util::builder()
        .jwt_leeway(std::time::Duration::ZERO)
        .build()
        .unwrap();
    let addr = gw.local_addr();
    let now = util::now_secs();
    let cases = [
        ("missing", None),
        ("malformed", Some("not.a.jwt".to_owned())),
        ("garbage", Some("abc".to_owned())),
        (
            "bad signature",
            Some(util::sign(
                &json!({"sub": "u", "exp": now + 60}),
                b"some-other-secret-some-other-secret",
            )),
        ),
        (
            "expired",
            Some(util::sign(
                &json!({"sub": "u", "exp": now - 3600}),
                util::SECRET,
            )),
        ),
        (
            "not yet valid",
            Some(util::sign(
                &json!({"sub": "u", "exp": now + 7200, "nbf": now + 3600}),
                util::SECRET,
            )),
        ),
        (
            "no sub",
            Some(util::sign(&json!({"exp": now + 60}), util::SECRET)),
        ),
        (
            "no exp",
            Some(util::sign(&json!({"sub": "u"}), util::SECRET)),
        ),
        (
            "empty sub",
            Some(util::sign(
                &json!({"sub": "", "exp": now + 60}),
                util::SECRET,
            )),
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&format!(r#"{{"sub":"u","exp":{}}}"#, now + 60))
            )),
        ),
    ];
    for (what, token) in cases {
        for via_query in [false, true] {
            let req = match (&token, via_query) {
                (None, _) => util::upgrade_request("/ws", ""),
                (Some(t), false) => {
                    util::upgrade_request("/ws", &format!("Authorization: Bearer {t}\r\n"))
                }
                (Some(t), true) => util::upgrade_request(&format!("/ws?token={t}"), ""),
            };
            let resp = util::http(addr, &req);
            assert!(
                resp.starts_with("HTTP/1.1 401 "),
                "{what} (query: {via_query}) got: {resp}"
            );
            assert!(
                resp.contains("WWW-Authenticate: Bearer"),
                "{what}: challenge header"
            );
            assert!(!resp.contains("101"), "{what}: no upgrade");
            // A missing claim is named, not called "malformed".
            let named = match what {
                "no sub" => Some("missing required claim: sub"),
                "no exp" => Some("missing required claim: exp"),
                _ => None,
            };
            if let Some(named) = named {
                assert!(resp.contains(named), "{what}: {resp}");
            }
        }
    }
    util::eventually(
        std::time::Duration::from_secs(5),
        "20 auth rejections counted",
        || gw.metrics().stats.rejected_auth == 20,
    );
    assert_eq!(gw.metrics().stats.connections_accepted, 0);
    gw.shutdown().unwrap();
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn a_valid_token_in_the_query_is_accepted() {
    let gw = util::builder().build().unwrap();
    let ws = util::try_connect(
        gw.local_addr(),
        &format!("/ws?token={}", util::token("q")),
        None,
    );
    assert!(ws.is_ok());
    gw.shutdown().unwrap();
}

fn keyed(alg: Algorithm, private_pem: &str) -> String {
    let key = std::fs::read(format!(
        "{}/tests/keys/{private_pem}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let enc = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&key).unwrap(),
        _ => EncodingKey::from_ec_pem(&key).unwrap(),
    };
    jsonwebtoken::encode(
        &Header::new(alg),
        &json!({"sub": "k", "exp": util::now_secs() + 60}),
        &enc,
    )
    .unwrap()
}

#[test]
fn rs256_and_es256_public_keys_verify_their_tokens_only() {
    let dir = env!("CARGO_MANIFEST_DIR");
    for (alg, public, private) in [
        (Algorithm::RS256, "rs256_public.pem", "rs256_private.pem"),
        (Algorithm::ES256, "es256_public.pem", "es256_private.pem"),
    ] {
        let path = format!("{dir}/tests/keys/{public}");
        let b = floodgate::Gateway::builder().bind("127.0.0.1:0").shards(1);
        let b = if alg == Algorithm::RS256 {
            b.jwt_rs256_public_key(path)
        } else {
            b.jwt_es256_public_key(path)
        };
        let gw = b.build().unwrap();
        let good = keyed(alg, private);
        assert!(
            util::try_connect(gw.local_addr(), "/ws", Some(&good)).is_ok(),
            "{alg:?} token accepted"
        );
        let hs = util::token("k");
        let req = util::upgrade_request("/ws", &format!("Authorization: Bearer {hs}\r\n"));
        assert!(
            status_of(gw.local_addr(), &req).starts_with("HTTP/1.1 401"),
            "{alg:?} gateway refuses HS256"
        );
        gw.shutdown().unwrap();
    }
}

#[test]
fn unreadable_key_files_are_a_clear_error() {
    let err = floodgate::Gateway::builder()
        .bind("127.0.0.1:0")
        .jwt_rs256_public_key("/nonexistent/key.pem")
        .build()
        .unwrap_err();
    assert!(matches!(err, floodgate::Error::Key { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/key.pem"));
    assert!(err.is_fatal());
}

#[test]
fn keys_that_could_never_verify_a_token_are_refused_at_start() {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let cases = [
        // The private key where the public key goes.
        ("rs256", keys.join("rs256_private.pem"), "PRIVATE KEY"),
        ("es256", keys.join("es256_private.pem"), "PRIVATE KEY"),
        // A key on another curve: ES256 is P-256 only.
        ("es256", keys.join("p384_public.pem"), "P-256"),
        // An RSA key given as the ES256 key.
        ("es256", keys.join("rs256_public.pem"), "P-256"),
        // A file that never ends.
        ("rs256", "/dev/zero".into(), "not a regular file"),
    ];
    for (alg, path, why) in cases {
        let b = floodgate::Gateway::builder().bind("127.0.0.1:0");
        let b = match alg {
            "rs256" => b.jwt_rs256_public_key(&path),
            _ => b.jwt_es256_public_key(&path),
        };
        let err = b.build().unwrap_err();
        assert!(matches!(err, floodgate::Error::Key { .. }), "{err}");
        assert!(
            err.to_string().contains(why),
            "{alg} {}: {err}",
            path.display()
        );
    }
}

#[test]
fn audience_issuer_and_origin_are_checked_where_configured() {
    let gw = util::builder()
        .jwt_audience("floodgate")
        .jwt_issuer("https://auth.example.com")
        .allowed_origins(["https://app.example.com", "https://*.example.org"])
        .build()
        .unwrap();
    let addr = gw.local_addr();
    let now = util::now_secs();
    let tok = |claims: serde_json::Value| util::sign(&claims, util::SECRET);
    let good =
        json!({"sub": "u", "exp": now + 60, "aud": "floodgate", "iss": "https://auth.example.com"});
    let cases = [
        (
            "no aud",
            json!({"sub": "u", "exp": now + 60, "iss": "https://auth.example.com"}),
            "aud",
        ),
        (
            "other aud",
            json!({"sub": "u", "exp": now + 60, "aud": "x", "iss": "https://auth.example.com"}),
            "aud",
        ),
        (
            "no iss",
            json!({"sub": "u", "exp": now + 60, "aud": "floodgate"}),
            "iss",
        ),
        (
            "other iss",
            json!({"sub": "u", "exp": now + 60, "aud": "floodgate", "iss": "evil"}),
            "iss",
        ),
    ];
    for (what, claims, named) in cases {
        let req =
            util::upgrade_request("/ws", &format!("Authorization: Bearer {}\r\n", tok(claims)));
        let resp = util::http(addr, &req);
        assert!(resp.starts_with("HTTP/1.1 401"), "{what}: {resp}");
        assert!(resp.contains(named), "{what}: {resp}");
    }
    let auth = format!("Authorization: Bearer {}\r\n", tok(good));
    for (origin, ok) in [
        (None, true),
        (Some("https://app.example.com"), true),
        (Some("https://a.example.org"), true),
        (Some("https://evil.example.com"), false),
        (Some("null"), false),
    ] {
        let extra = match origin {
            Some(o) => format!("{auth}Origin: {o}\r\n"),
            None => auth.clone(),
        };
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        std::io::Write::write_all(&mut s, util::upgrade_request("/ws", &extra).as_bytes()).unwrap();
        let mut head = [0u8; 12];
        std::io::Read::read_exact(&mut s, &mut head).unwrap();
        let head = String::from_utf8_lossy(&head).into_owned();
        let want = if ok { "HTTP/1.1 101" } else { "HTTP/1.1 403" };
        assert_eq!(head, want, "origin {origin:?}");
    }
    util::eventually(
        std::time::Duration::from_secs(5),
        "origin refusals counted",
        || gw.metrics().stats.rejected_origin == 2,
    );
    gw.shutdown().unwrap();
}

#[test]
fn a_malformed_allowed_origin_is_refused_naming_the_setting() {
    let e = util::builder()
        .allowed_origins(["example.com"])
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("allowed_origins"), "{e}");
}
