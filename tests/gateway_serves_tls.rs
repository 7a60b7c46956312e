//! The gateway serves `wss://` itself (`tls_cert_file`, `tls_key_file`): events reach a client
//! over TLS in order, a plain client gets nothing, and the certificate is loaded again (by
//! `Gateway::reload_tls`, and by SIGHUP in `floodgate serve`) without dropping the connections
//! already open. The CAs and certificates are made by openssl for each run; the client is
//! rustls under tungstenite, trusting one CA at a time.

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

/// A `wss://` client for `user`, trusting only the CA in `ca`; its `hello` frame is read.
fn connect(addr: SocketAddr, ca: &Path, user: &str) -> Result<TlsClient, String> {
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
    let stream = rustls::StreamOwned::new(session, tcp);
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
    let out = util::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_floodgate")).args([
            "load",
            "connect",
            "--url",
            &url,
            "--ca-file",
            ca2.to_str().unwrap(),
            "--connections",
            "20",
            "--jwt-secret",
            std::str::from_utf8(util::SECRET).unwrap(),
            "--rate",
            "200",
            "--hold",
            "100ms",
            "--json",
        ]),
        Duration::from_secs(60),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{report}");
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
