//! `floodgate load` against servers with their own handshake rules: headers (templated per
//! connection), a subprotocol and a subscribe message answered before the stream, for an
//! independent Python `websockets` feed; advice on a 401; each scenario's own `--help`.

mod util;

use std::process::{Command, Output};
use std::time::Duration;

fn floodgate(args: &[&str]) -> Output {
    util::output_within(
        Command::new(env!("CARGO_BIN_EXE_floodgate")).args(args),
        Duration::from_secs(60),
    )
}

/// What the feed wants of every connection: its key, and the subprotocol it speaks.
const FEED_AUTH: [&str; 4] = [
    "--header",
    "X-Api-Key: key-{conn}",
    "--subprotocol",
    "feed.v1",
];

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn headers_and_a_subprotocol_open_an_independent_feed() {
    if !util::python_websockets() {
        return;
    }
    let (_server, port) = util::python_server("feed_server.py", &["key-".as_ref()]);
    let url = format!("ws://127.0.0.1:{port}/feed?c={{conn}}&n=300");
    let subscribe = |extra: &[&str]| {
        let mut args = vec![
            "load",
            "subscribe",
            "--url",
            &url,
            "--connections",
            "4",
            "--seq-field",
            "/seq",
            "--gapless",
            "--latency-field",
            "/ts",
            "--events",
            "1200",
            "--duration",
            "20s",
            "--json",
        ];
        args.extend_from_slice(extra);
        floodgate(&args)
    };

    // The key is templated per connection ({conn}); the server checks each one.
    let out = subscribe(&[
        "--header",
        "X-Api-Key: key-{conn}",
        "--subprotocol",
        "feed.v1",
    ]);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["events"], 1200, "{report}");
    assert_eq!(report["errors_total"], 0, "{report}");

    // Without the header: refused, and the error says what to send.
    let out = subscribe(&["--subprotocol", "feed.v1"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("HTTP 401 (missing or wrong X-Api-Key)") && t.contains("--header"),
        "{t}"
    );

    // A subprotocol the server does not speak: this server refuses with 400 and says why,
    // and the error shows its reason. (A server that answers 101 without choosing one fails
    // the handshake too: floodgate-wsclient's unit tests.)
    let out = subscribe(&[
        "--header",
        "X-Api-Key: key-{conn}",
        "--subprotocol",
        "feed.v2",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("HTTP 400 (Failed to open a WebSocket connection: invalid subprotocol"),
        "{}",
        text(&out)
    );

    // A feed that streams only after a subscribe: sent once connected, its acknowledgement
    // awaited before measuring. The welcome and the acknowledgement are not counted; the
    // stream is, every event once and in order.
    let sub_url = format!("ws://127.0.0.1:{port}/feed?c={{conn}}&n=300&sub=1");
    let run_sub = |connections: &str, extra: &[&str]| {
        let mut args = vec![
            "load",
            "subscribe",
            "--url",
            &sub_url,
            "--connections",
            connections,
            "--seq-field",
            "/seq",
            "--gapless",
            "--events",
            "1200",
            "--duration",
            "20s",
            "--idle-timeout",
            "2s",
            "--json",
        ];
        args.extend_from_slice(&FEED_AUTH);
        args.extend_from_slice(extra);
        floodgate(&args)
    };
    // (Python's json.dumps puts a space after each colon.)
    let out = run_sub(
        "4",
        &[
            "--send-on-open",
            r#"{"subscribe":"feed-{conn}-{uuid}"}"#,
            "--await-reply",
            r#""subscribed": "feed-{conn}-"#,
        ],
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["events"], 1200, "{report}");
    assert_eq!(
        report["other_frames"], 0,
        "the opening exchange is not counted: {report}"
    );
    assert_eq!(report["errors_total"], 0, "{report}");
    // Without the subscribe nothing streams: the run cannot complete.
    let out = run_sub("1", &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    // Awaiting a reply that never comes: the connection is refused, saying what was awaited
    // and what came instead.
    let out = run_sub("1", &["--await-reply", "never-said"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("no reply containing `never-said`") && t.contains("welcome"),
        "{t}"
    );

    // Messages on a schedule while measured: each of 2 connections pings every 200 ms for 2 s;
    // the feed answers each with a pong, a frame without /seq (so: an "other frame").
    let ping_url = format!("ws://127.0.0.1:{port}/feed?c={{conn}}&n=10");
    let out = floodgate(
        &[
            &["load", "subscribe", "--url", &ping_url][..],
            &FEED_AUTH,
            &[
                "--connections",
                "2",
                "--seq-field",
                "/seq",
                "--duration",
                "2s",
                "--send-every",
                "200ms",
                "--send-message",
                r#"{"ping":{seq}}"#,
                "--json",
            ],
        ]
        .concat(),
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["events"], 20, "{report}");
    let pongs = report["other_frames"].as_u64().unwrap();
    assert!(
        (14..=22).contains(&pongs),
        "about 10 pongs per connection: {report}"
    );

    // Headers the handshake sets itself are refused before anything connects.
    let out = subscribe(&["--header", "Sec-WebSocket-Protocol: feed.v1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("use --subprotocol"), "{}", text(&out));
}

#[test]
fn a_401_says_that_a_token_is_needed_and_how_to_pass_one() {
    let gw = util::builder().build().unwrap();
    let url = format!("ws://{}/ws", gw.local_addr());
    let run = |extra: &[&str]| {
        let mut args = vec!["load", "subscribe", "--url", &url, "--events", "1"];
        args.extend_from_slice(extra);
        floodgate(&args)
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let t = text(&out);
    for advice in [
        "HTTP 401",
        "--jwt-secret",
        "--token-file",
        "--header 'Authorization: Bearer",
    ] {
        assert!(t.contains(advice), "`{advice}` missing from: {t}");
    }
    // A token signed with another secret: the advice is about the key, not the lack of one.
    let out = run(&[
        "--jwt-secret",
        "not-the-gateway-secret-not-the-gateway-secret",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("refused the credentials"), "{t}");
    gw.shutdown().unwrap();
}

#[test]
fn each_scenario_has_its_own_help() {
    let help = |scenario: &str| text(&floodgate(&["load", scenario, "--help"]));
    let cases: [(&str, &[&str], &[&str]); 4] = [
        (
            "subscribe",
            &["--seq-field", "--gapless"],
            &["--api-key", "--rate", "--hold"],
        ),
        (
            "echo",
            &["--rate", "--max-lag", "--message-bytes"],
            &["--seq-field", "--api-key"],
        ),
        (
            "publish",
            &["--rate", "--api-key", "--batch"],
            &["--seq-field", "--hold"],
        ),
        (
            "connect",
            &["--rate", "--hold"],
            &["--seq-field", "--api-key", "--message-bytes"],
        ),
    ];
    for (scenario, has, lacks) in cases {
        let h = help(scenario);
        assert!(h.contains(&format!("floodgate load {scenario}")), "{h}");
        for flag in has
            .iter()
            .chain(["--url", "--threshold", "--header"].iter())
        {
            assert!(h.contains(flag), "{scenario} --help lacks {flag}");
        }
        for flag in lacks {
            assert!(!h.contains(flag), "{scenario} --help shows {flag}");
        }
    }
    // The harness's own help lists the scenarios and says where each one's options are.
    let h = text(&floodgate(&["load", "--help"]));
    for s in [
        "subscribe",
        "echo",
        "publish",
        "connect",
        "<SCENARIO> --help",
    ] {
        assert!(h.contains(s), "{s}: {h}");
    }
}

#[test]
fn a_scenario_file_runs_named_scenarios_at_once() {
    if !util::python_websockets() {
        return;
    }
    let (_server, port) = util::python_server("feed_server.py", &["key-".as_ref()]);
    let file = format!("{}/examples/load/feed.toml", env!("CARGO_MANIFEST_DIR"));
    let run = |extra: &[&str]| {
        util::output_within(
            Command::new(env!("CARGO_BIN_EXE_floodgate"))
                .args(["load", "run", &file, "--json"])
                .args(extra)
                .env("FEED_PORT", &port),
            Duration::from_secs(60),
        )
    };
    let out = run(&[]);
    let r: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(r["schema"], "floodgate.load.run/1");
    let (sub, direct) = (&r["scenarios"]["subscribers"], &r["scenarios"]["direct"]);
    assert_eq!(
        (sub["events"].as_u64(), direct["events"].as_u64()),
        (Some(1200), Some(1000)),
        "{r}"
    );
    assert_eq!(sub["connections"], 4);
    assert_eq!(direct["connections"], 2);
    assert_eq!(sub["thresholds"][1]["threshold"], "/errors_total<1", "{r}");
    assert_eq!(sub["thresholds"][1]["passed"], true, "{r}");

    let out = run(&["--only", "direct"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["scenarios"].as_object().unwrap().len(), 1, "{r}");
}

#[test]
fn scenario_files_are_checked_before_anything_runs() {
    let dir = util::temp_dir("load-run-files");
    let examples = format!("{}/examples/load", env!("CARGO_MANIFEST_DIR"));
    // Every example in the repository is a valid file (given its variables).
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        let out = util::output_within(
            Command::new(env!("CARGO_BIN_EXE_floodgate"))
                .args(["load", "run", "--check"])
                .arg(&path)
                .env("FEED_PORT", "9")
                .env(
                    "CENTRIFUGO_SECRET",
                    "a-centrifugo-secret-of-32-bytes-or-more",
                )
                .env("PUSHER_APP_KEY", "app-key")
                .env("PUSHER_HOST", "127.0.0.1:6001"),
            Duration::from_secs(20),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            text(&out)
        );
    }
    let check = |toml: &str| {
        let path = dir.join("s.toml");
        std::fs::write(&path, toml).unwrap();
        let out = util::output_within(
            Command::new(env!("CARGO_BIN_EXE_floodgate"))
                .args(["load", "run", "--check"])
                .arg(&path)
                .env_remove("NOT_SET_HERE"),
            Duration::from_secs(20),
        );
        assert_eq!(out.status.code(), Some(2), "{toml}: {}", text(&out));
        text(&out)
    };
    let cases = [
        ("[scenarios.a]\nurl = \"ws://127.0.0.1:9/\"\n", "scenario `a`: needs `scenario`"),
        (
            "[scenarios.b]\nscenario = \"subscribe\"\nurl = \"ws://127.0.0.1:9/\"\nrate = 5\nevents = 1\n",
            "scenario `b`:",
        ),
        (
            "[scenarios.c]\nscenario = \"echo\"\nurl = \"ws://127.0.0.1:9/${NOT_SET_HERE}\"\n",
            "${NOT_SET_HERE} is not set",
        ),
        ("[scenarios.d]\nscenario = \"run\"\n", "scenario `d`: needs `scenario`"),
        ("[other]\n", "unknown table `other`"),
        ("not toml at all [", "s.toml"),
    ];
    for (toml, says) in cases {
        let t = check(toml);
        assert!(t.contains(says), "{toml} -> {t}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// examples/load/pusher.toml's handshake (subscribe, then wait for subscription_succeeded)
/// against a Pusher-protocol server the test starts, with 4 connections for 2 s instead of 200
/// for 60 s: events arrive and the file's rate threshold passes; a wrong app key gets nothing.
#[test]
fn the_pusher_example_subscribes_to_a_pusher_protocol_server() {
    if !util::python_websockets() {
        return;
    }
    let (_server, port) = util::python_server("pusher_server.py", &["app-key".as_ref()]);
    let example = std::fs::read_to_string(format!(
        "{}/examples/load/pusher.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert!(example.contains("connections = 200") && example.contains("duration = \"60s\""));
    let short = example
        .replace("connections = 200", "connections = 4")
        .replace("duration = \"60s\"", "duration = \"2s\"");
    let dir = util::temp_dir("load-pusher");
    let file = dir.join("pusher.toml");
    std::fs::write(&file, short).unwrap();
    let run = |key: &str| {
        util::output_within(
            Command::new(env!("CARGO_BIN_EXE_floodgate"))
                .args(["load", "run", "--json"])
                .arg(&file)
                .env("PUSHER_HOST", format!("127.0.0.1:{port}"))
                .env("PUSHER_APP_KEY", key),
            Duration::from_secs(60),
        )
    };
    let out = run("app-key");
    let r: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(out.status.code(), Some(0), "{r}");
    let channel = &r["scenarios"]["channel"];
    assert_eq!(channel["connections"], 4, "{r}");
    assert!(channel["events"].as_u64().unwrap() > 2000, "{r}");
    assert_eq!(channel["errors_total"], 0, "{r}");
    assert_eq!(channel["thresholds"][0]["passed"], true, "{r}");
    // A key the server does not know: no subscription, so the run cannot start.
    let out = run("other-key");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}
