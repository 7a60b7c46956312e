//! The gateway serves `wss://` itself (`tls_cert_file`, `tls_key_file`): events reach a client
//! over TLS in order, a plain client gets nothing, and the certificate is loaded again (by
//! `Gateway::reload_tls`, and by SIGHUP in `floodgate serve`) without dropping the connections
//! already open. The CAs and certificates are made by openssl for each run; the client is
//! rustls under tungstenite, trusting one CA at a time. The ingest endpoints are served over
//! the same TLS port: `POST /api/publish` over https, and `floodgate load publish` over wss.

mod util;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

type TlsClient = WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// A TLS session to `addr` (name 127.0.0.1), trusting only the CA in `ca`.
fn tls_to(addr: SocketAddr, ca: &Path) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let session =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(session, tcp)
}

/// A `wss://` client for `user`, trusting only the CA in `ca`; its `hello` frame is read.
fn connect(addr: SocketAddr, ca: &Path, user: &str) -> Result<TlsClient, String> {
    let stream = tls_to(addr, ca);
    let req = format!("wss://{addr}/ws?token={}", util::token(user))
        .into_client_request()
        .unwrap();
    let (mut ws, _) = tungstenite::client(req, stream).map_err(|e| e.to_string())?;
    let hello = ws.read().map_err(|e| e.to_string())?;
    assert!(hello.to_text().unwrap().contains("\"hello\""), "{hello:?}");
    Ok(ws)
}

fn emit_notes(em: &mut floodgate::Emitter, user: &str, n: u32) {
    for i in 0..n {
        util::emit_retrying(em, user, floodgate::Event::custom("note", &i));
    }
}

fn read_seqs(ws: &mut TlsClient, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| match ws.read().unwrap() {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                v["seq"].as_u64().unwrap()
            }
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Runs `floodgate load <args>` trusting `ca`, with the tests' JWT secret; its JSON report,
/// after checking that the run passed.
fn load_over_tls(ca: &Path, args: &[&str]) -> serde_json::Value {
    let out = util::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .arg("load")
            .args(args)
            .args(["--ca-file", ca.to_str().unwrap(), "--json", "--jwt-secret"])
            .arg(std::str::from_utf8(util::SECRET).unwrap()),
        Duration::from_secs(60),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{report}");
    report
}

#[test]
fn events_go_out_over_tls_and_a_reload_keeps_open_connections() {
    let name = "gateway-tls";
    let dir = util::temp_dir(name);
    let (ca1, cert1, key1) = util::test_ca(&util::temp_dir(&format!("{name}-one")));
    let (ca2, cert2, key2) = util::test_ca(&util::temp_dir(&format!("{name}-two")));
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(&cert1, &cert).unwrap();
    std::fs::copy(&key1, &key).unwrap();
    let gw = util::builder().tls(&cert, &key).build().unwrap();
    assert!(gw.serves_tls());
    let addr = gw.local_addr();
    let mut em = gw.emitter();

    let mut old = connect(addr, &ca1, "alice").expect("a client trusting the first CA");
    emit_notes(&mut em, "alice", 100);
    assert_eq!(read_seqs(&mut old, 100), (1..=100).collect::<Vec<_>>());

    // A plain client gets no WebSocket from the TLS port.
    assert!(util::try_connect(addr, "/ws", Some(&util::token("bob"))).is_err());
    // A client that does not trust the CA gets no session.
    assert!(connect(addr, &ca2, "carol").is_err());

    // New files, loaded again: new connections get the new certificate, the open one goes on.
    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    gw.reload_tls().unwrap();
    assert!(
        connect(addr, &ca1, "dave").is_err(),
        "the old certificate is no longer served"
    );
    let mut new = connect(addr, &ca2, "alice").expect("a client trusting the second CA");
    emit_notes(&mut em, "alice", 50);
    assert_eq!(read_seqs(&mut old, 50), (101..=150).collect::<Vec<_>>());
    assert_eq!(read_seqs(&mut new, 50), (101..=150).collect::<Vec<_>>());

    // `floodgate load` over wss://, trusting the second CA: 20 connections open and close.
    let url = format!("wss://{addr}/ws?c={{conn}}");
    let report = load_over_tls(
        &ca2,
        &[
            "connect",
            "--url",
            &url,
            "--connections",
            "20",
            "--rate",
            "200",
            "--hold",
            "100ms",
        ],
    );
    assert_eq!(report["events"], 20, "{report}");

    // A reload with a broken file keeps the certificate in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    let err = gw.reload_tls().unwrap_err().to_string();
    assert!(err.contains("tls_cert_file"), "{err}");
    connect(addr, &ca2, "erin").expect("the second certificate is still served");
    drop(em);
    gw.shutdown().unwrap();
}

#[test]
fn serve_loads_the_certificate_again_on_sighup() {
    let name = "serve-tls";
    let dir = util::temp_dir(name);
    let (ca1, cert1, key1) = util::test_ca(&util::temp_dir(&format!("{name}-one")));
    let (ca2, cert2, key2) = util::test_ca(&util::temp_dir(&format!("{name}-two")));
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(&cert1, &cert).unwrap();
    std::fs::copy(&key1, &key).unwrap();
    let serve = util::Serve::start(
        "",
        &[
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
        ],
        &[],
    );
    util::eventually(Duration::from_secs(5), "the wss:// banner", || {
        serve.log().contains("listening on wss://")
    });
    let _open = connect(serve.addr, &ca1, "u1").expect("the first certificate");
    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    let pid = serve.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    util::eventually(Duration::from_secs(5), "the reload", || {
        serve.log().contains("TLS certificate and key loaded again")
    });
    connect(serve.addr, &ca2, "u2").expect("the second certificate after SIGHUP");
    assert!(connect(serve.addr, &ca1, "u3").is_err());
}

const KEY: &str = "ingest-key-for-tls-tests-0123456789";

#[test]
fn ingest_is_served_over_tls() {
    use std::io::{BufRead, BufReader, Read, Write};

    let dir = util::temp_dir("ingest-tls");
    let (ca, cert, key) = util::test_ca(&dir);
    let gw = util::builder()
        .tls(&cert, &key)
        .ingest_api_key(KEY)
        .build()
        .unwrap();
    let addr = gw.local_addr();
    let mut sub = connect(addr, &ca, "alice").expect("a wss client");

    // Three requests on one keep-alive https connection: two batches for alice, then one
    // with a bad key, which is refused and ends the connection.
    let mut https = BufReader::new(tls_to(addr, &ca));
    let answer = |https: &mut BufReader<_>, key: &str, body: &str| -> (String, String) {
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let s: &mut rustls::StreamOwned<_, _> = https.get_mut();
        s.write_all(req.as_bytes()).unwrap();
        let mut status = String::new();
        https.read_line(&mut status).unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            https.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        https.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap())
    };
    for batch in 0..2 {
        let events: Vec<String> = (0..5)
            .map(|i| {
                format!(
                    r#"{{"user":"alice","type":"note","data":{}}}"#,
                    batch * 5 + i
                )
            })
            .collect();
        let (status, body) = answer(&mut https, KEY, &format!("[{}]", events.join(",")));
        assert!(status.starts_with("HTTP/1.1 200"), "{status} {body}");
        assert!(body.contains(r#""accepted":5"#), "{body}");
    }
    let (status, body) = answer(&mut https, "wrong-key", "[]");
    assert!(status.starts_with("HTTP/1.1 401"), "{status} {body}");
    assert_eq!(read_seqs(&mut sub, 10), (1..=10).collect::<Vec<_>>());

    // A plain POST to the TLS port is not answered in clear.
    let plain = util::http(
        addr,
        &format!("POST /api/publish HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 2\r\n\r\n[]"),
    );
    assert!(!plain.contains("HTTP/1.1 200"), "{plain}");

    // The ingest socket over wss://, driven by `floodgate load publish` trusting the test CA:
    // every event published reaches its subscriber, in order.
    let url = format!("wss://{addr}/ws");
    let report = load_over_tls(
        &ca,
        &[
            "publish",
            "--url",
            &url,
            "--connections",
            "4",
            "--user-prefix",
            "tls-",
            "--api-key",
            KEY,
            "--rate",
            "2000",
            "--duration",
            "1s",
        ],
    );
    let sent = report["generator"]["sent"].as_u64().unwrap();
    assert!(sent >= 1000, "{report}");
    assert_eq!(report["events"].as_u64(), Some(sent), "{report}");
    assert_eq!(report["errors_total"], 0, "{report}");
    assert_eq!(gw.metrics().ingest.events_accepted, 10 + sent);
    drop(sub);
    gw.shutdown().unwrap();
}
