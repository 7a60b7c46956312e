//! `floodgate load` speaks wss:// to an independent TLS server (Python `websockets` with a
//! certificate made here by openssl), trusting it only when given its CA.

mod util;

use std::io::BufReader;
use std::process::{Command, Stdio};

/// Kills the server it holds (a process this test started) when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn echo_over_wss_trusts_the_given_ca_and_only_it() {
    if !util::python_websockets() {
        return;
    }
    let dir = util::temp_dir("load-tls");
    // A CA of its own, and a server certificate it signs (webpki refuses a CA certificate
    // used as the server's own).
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert, key, csr) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("leaf.csr"),
    );
    let ext = dir.join("leaf.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let openssl = |args: &[&std::ffi::OsStr]| {
        let ok = Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl {args:?} failed");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let mut a: Vec<&std::ffi::OsStr> = vec![
        os("req"),
        os("-x509"),
        os("-days"),
        os("1"),
        os("-subj"),
        os("/CN=floodgate test CA"),
    ];
    a.extend(ec.iter().map(|s| os(s)));
    a.extend([
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
    ]);
    openssl(&a);
    let mut a: Vec<&std::ffi::OsStr> = vec![os("req"), os("-subj"), os("/CN=localhost")];
    a.extend(ec.iter().map(|s| os(s)));
    a.extend([os("-keyout"), key.as_os_str(), os("-out"), csr.as_os_str()]);
    openssl(&a);
    openssl(&[
        os("x509"),
        os("-req"),
        os("-days"),
        os("1"),
        os("-in"),
        csr.as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-extfile"),
        ext.as_os_str(),
        os("-out"),
        cert.as_os_str(),
    ]);
    let script = format!(
        "{}/tests/clients/tls_echo_server.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&cert)
        .arg(&key)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the TLS server");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let port = util::read_line_starting(&mut BufReader::new(stdout), "port ");
    let url = format!("wss://127.0.0.1:{port}/");
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_floodgate"));
        cmd.args([
            "load",
            "echo",
            "--url",
            &url,
            "--connections",
            "2",
            "--rate",
            "400",
            "--duration",
            "1s",
            // This test is about whom TLS trusts, not the generator's timing: one scheduler
            // stall of 10 ms on a busy CI machine must not turn the run into `overloaded`.
            "--max-lag",
            "1s",
            "--json",
        ])
        .args(extra);
        let out = util::output_within(&mut cmd, std::time::Duration::from_secs(60));
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&["--ca-file", ca.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let replies = r["events"].as_u64().unwrap();
    assert!(
        (300..=420).contains(&replies),
        "about 400 replies over TLS: {replies}"
    );
    assert_eq!(r["errors_total"], 0);
    // Without the CA, the self-signed certificate is refused: no connection opens.
    let (code, _, stderr) = run(&[]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
