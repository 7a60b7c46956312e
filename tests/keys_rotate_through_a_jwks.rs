//! Keys that rotate: `floodgate serve` checks tokens against a JSON Web Key Set served by an
//! HTTP server of the test's own (`jwt_jwks_url`) or kept in a file (`jwt_jwks_file`), picks
//! each token's key by its `kid`, takes in new keys (on an unknown `kid`, at most every 10 s,
//! and on its schedule), lets removed keys go, and keeps its keys when the set cannot be read.
//! Keys are made by `openssl` for each run.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// A signing key and its public JWK.
struct Key {
    alg: Algorithm,
    private_pem: Vec<u8>,
    jwk: String,
}

fn b64url(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn rsa_key(dir: &Path, kid: &str) -> Key {
    let path = dir.join(format!("{kid}.pem"));
    let p = path.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        p,
    ]);
    let modulus = openssl(&["rsa", "-in", p, "-noout", "-modulus"]);
    let n = hex(modulus.trim().trim_start_matches("Modulus="));
    Key {
        alg: Algorithm::RS256,
        private_pem: std::fs::read(&path).unwrap(),
        jwk: format!(
            r#"{{"kty":"RSA","kid":"{kid}","use":"sig","alg":"RS256","n":"{}","e":"AQAB"}}"#,
            b64url(&n)
        ),
    }
}

fn ec_key(dir: &Path, kid: &str) -> Key {
    let path = dir.join(format!("{kid}.pem"));
    let p = path.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        p,
    ]);
    let text = openssl(&["ec", "-in", p, "-noout", "-text"]);
    let public: String = text
        .split("pub:")
        .nth(1)
        .unwrap()
        .split("ASN1")
        .next()
        .unwrap()
        .into();
    let point = hex(&public);
    assert_eq!(
        (point.len(), point[0]),
        (65, 4),
        "an uncompressed P-256 point"
    );
    Key {
        alg: Algorithm::ES256,
        private_pem: std::fs::read(&path).unwrap(),
        jwk: format!(
            r#"{{"kty":"EC","kid":"{kid}","crv":"P-256","x":"{}","y":"{}"}}"#,
            b64url(&point[1..33]),
            b64url(&point[33..])
        ),
    }
}

fn set(keys: &[&Key]) -> String {
    let jwks: Vec<&str> = keys.iter().map(|k| k.jwk.as_str()).collect();
    format!(r#"{{"keys":[{}]}}"#, jwks.join(","))
}

/// A token for `user` signed by `key`, naming `kid`.
fn token(key: &Key, kid: &str, user: &str) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(kid.into());
    let enc = match key.alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&key.private_pem),
        _ => EncodingKey::from_ec_pem(&key.private_pem),
    }
    .unwrap();
    let claims = serde_json::json!({"sub": user, "exp": util::now_secs() + 600});
    jsonwebtoken::encode(&header, &claims, &enc).unwrap()
}

/// The status line of a `/ws` handshake with `token` (read alone: after a 101 the connection
/// stays open).
fn status(serve: &util::Serve, token: &str) -> String {
    let mut s = std::net::TcpStream::connect(serve.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(util::upgrade_request(&format!("/ws?token={token}"), "").as_bytes())
        .unwrap();
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

fn accepted(serve: &util::Serve, token: &str) -> bool {
    status(serve, token).contains(" 101 ")
}

/// An HTTP server answering every request with its current status and body, counting them.
struct JwksServer {
    addr: std::net::SocketAddr,
    answer: Arc<Mutex<(u16, String)>>,
    requests: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(body: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new((200, body)));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, r) = (answer.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut head = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while head.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                r.fetch_add(1, Ordering::SeqCst);
                let (code, body) = a.lock().unwrap().clone();
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        JwksServer {
            addr,
            answer,
            requests,
        }
    }

    fn serve(&self, code: u16, body: String) {
        *self.answer.lock().unwrap() = (code, body);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn keys_come_and_go_with_the_set_at_a_url_and_survive_a_set_that_cannot_be_read() {
    let dir = util::temp_dir("jwks-url");
    let (a, b, c, d) = (
        rsa_key(&dir, "a"),
        rsa_key(&dir, "b"),
        ec_key(&dir, "c"),
        rsa_key(&dir, "d"),
    );
    let jwks = JwksServer::start(set(&[&a]));
    let url = format!("http://{}/.well-known/jwks.json", jwks.addr);
    let serve = util::Serve::start(
        "",
        &["--jwt-jwks-url", &url, "--jwt-jwks-refresh", "10s"],
        &[("FLOODGATE_JWT_HS256_SECRET", "")],
    );
    assert!(
        accepted(&serve, &token(&a, "a", "u1")),
        "the key read at start"
    );
    // Signed by b but naming a: a bad signature. Naming a kid the set lacks: refused as such.
    assert!(status(&serve, &token(&b, "a", "u1")).contains(" 401 "));
    let unknown = util::http(
        serve.addr,
        &util::upgrade_request(&format!("/ws?token={}", token(&b, "b", "u1")), ""),
    );
    assert!(unknown.contains("unknown key"), "{unknown}");

    // Rotation: the set gains b (RS256) and c (ES256).
    // Signing with RSA is slow in a debug build: each token is made once.
    let (tb, tc, ta) = (
        token(&b, "b", "u2"),
        token(&c, "c", "u3"),
        token(&a, "a", "u1"),
    );
    let (td, tzz, tnew) = (
        token(&d, "d", "u5"),
        token(&d, "zz", "u4"),
        token(&d, "new", "u6"),
    );
    let t0 = Instant::now();
    jwks.serve(200, set(&[&a, &b, &c]));
    // The unknown kid above already asked for a read less than 10 s ago: b comes with the
    // next one allowed (or the schedule), within about 10 s.
    eventually("b accepted", Duration::from_secs(15), || {
        accepted(&serve, &tb)
    });
    assert!(accepted(&serve, &tc), "an ES256 key of the set");
    assert!(accepted(&serve, &ta), "a is still in the set");

    // Tokens naming unknown kids in a flood ask for at most one read per 10 s.
    let before = jwks.requests();
    let flood = Instant::now();
    while flood.elapsed() < Duration::from_secs(2) {
        assert!(!accepted(&serve, &tzz));
    }
    let reads = jwks.requests() - before;
    assert!(
        reads <= 1,
        "{reads} reads of the set during a 2 s flood of unknown kids"
    );

    // a leaves the set, d arrives: after the next read a is refused and d accepted.
    jwks.serve(200, set(&[&b, &c, &d]));
    eventually("d accepted", Duration::from_secs(15), || {
        accepted(&serve, &td)
    });
    assert!(!accepted(&serve, &ta), "a removed key is refused");

    // The set cannot be read (500, then garbage): the keys held stay in use.
    let reads_before = jwks.requests();
    jwks.serve(500, "oops".into());
    eventually("a failed read", Duration::from_secs(15), || {
        let _ = accepted(&serve, &tnew);
        jwks.requests() > reads_before
    });
    jwks.serve(200, "{\"keys\": 3}".into());
    std::thread::sleep(Duration::from_millis(300));
    assert!(accepted(&serve, &tb));
    assert!(accepted(&serve, &td));
    assert!(
        serve.log().contains("JWKS read failed"),
        "the failure is logged: {}",
        serve.log()
    );
    eprintln!(
        "rotation test took {:?} after the keys were made",
        t0.elapsed()
    );
}

#[test]
fn a_set_in_a_file_takes_in_a_new_key_as_soon_as_a_token_names_it() {
    let dir = util::temp_dir("jwks-file");
    let (a, b) = (rsa_key(&dir, "a"), ec_key(&dir, "b"));
    let file = dir.join("jwks.json");
    std::fs::write(&file, set(&[&a])).unwrap();
    let serve = util::Serve::start(
        "",
        &["--jwt-jwks-file", file.to_str().unwrap()],
        &[("FLOODGATE_JWT_HS256_SECRET", "")],
    );
    assert!(accepted(&serve, &token(&a, "a", "u1")));
    let tb = token(&b, "b", "u2");
    std::fs::write(&file, set(&[&a, &b])).unwrap();
    // The first token naming b asks for a read (no read was asked for before): b is in the
    // set a moment later, long before the 5 min schedule.
    eventually("b accepted", Duration::from_secs(5), || {
        accepted(&serve, &tb)
    });
}

#[test]
fn a_set_that_cannot_be_read_at_start_stops_the_start_naming_it() {
    let dir = util::temp_dir("jwks-bad");
    let bin = env!("CARGO_BIN_EXE_floodgate");
    let file = dir.join("jwks.json");
    std::fs::write(
        &file,
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#,
    )
    .unwrap();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (args, why) in [
        (
            vec!["--jwt-jwks-file".to_owned(), file.display().to_string()],
            "no RS256 or ES256".to_owned(),
        ),
        (
            vec!["--jwt-jwks-url".into(), format!("http://{closed}/jwks")],
            format!("http://{closed}/jwks"),
        ),
        (
            vec!["--jwt-jwks-url".into(), "http://example.com/jwks".into()],
            "must be an https:// URL".into(),
        ),
    ] {
        let out = util::output_within(
            Command::new(bin)
                .arg("serve")
                .args(["--bind", "127.0.0.1:0"])
                .args(&args)
                .env_remove("FLOODGATE_JWT_HS256_SECRET"),
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(&why), "{args:?}: {err}");
    }
}

#[test]
fn a_set_at_an_https_url_is_trusted_through_the_given_ca_and_only_through_it() {
    let dir = util::temp_dir("jwks-https");
    let a = rsa_key(&dir, "a");
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("jwks.json"), set(&[&a])).unwrap();
    let (ca, cert, key) = util::test_ca(&dir);
    let (_server, port) = util::python_server(
        "https_file_server.py",
        &[site.as_os_str(), cert.as_os_str(), key.as_os_str()],
    );
    let url = format!("https://127.0.0.1:{port}/jwks.json");
    let serve = util::Serve::start(
        "",
        &[
            "--jwt-jwks-url",
            &url,
            "--jwt-jwks-ca-file",
            ca.to_str().unwrap(),
        ],
        &[("FLOODGATE_JWT_HS256_SECRET", "")],
    );
    assert!(
        accepted(&serve, &token(&a, "a", "u1")),
        "the set fetched over https"
    );
    drop(serve);
    // Without the CA, the Mozilla roots do not vouch for the server: the start stops, saying
    // why.
    let out = util::output_within(
        Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .arg("serve")
            .args(["--bind", "127.0.0.1:0", "--jwt-jwks-url", &url])
            .env_remove("FLOODGATE_JWT_HS256_SECRET"),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without trusting the server");
    assert!(
        err.contains(&url) && err.to_lowercase().contains("issuer"),
        "{err}"
    );
}
