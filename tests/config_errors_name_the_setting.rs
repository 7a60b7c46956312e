//! Every invalid or conflicting setting is refused by `build` with an error naming it.
mod util;

use std::time::Duration;

use floodgate::{Error, Gateway, GatewayBuilder, Settings};

fn setting_of(b: GatewayBuilder) -> &'static str {
    match b.build() {
        Err(Error::Config(e)) => {
            assert!(
                e.to_string().contains(e.setting),
                "message names the setting: {e}"
            );
            e.setting
        }
        Err(e) => panic!("expected a config error, got {e}"),
        Ok(_) => panic!("expected a config error, got a gateway"),
    }
}

#[test]
fn each_invalid_setting_is_named() {
    let b = util::builder;
    let cases: Vec<(GatewayBuilder, &str)> = vec![
        (Gateway::builder().bind("127.0.0.1:0"), "jwt_hs256_secret"),
        (b().jwt_rs256_public_key("/k.pem"), "jwt_rs256_public_key"),
        (
            Gateway::builder()
                .bind("127.0.0.1:0")
                .jwt_hs256_secret("short"),
            "jwt_hs256_secret",
        ),
        (b().bind("localhost:80:90"), "bind"),
        (b().bind("not an address"), "bind"),
        (b().jwt_leeway(Duration::from_secs(3600)), "jwt_leeway"),
        (b().shards(1000), "shards"),
        (b().ring_capacity(5000), "ring_capacity"),
        (b().ring_capacity(1024), "ring_capacity"),
        (b().max_event_bytes(10), "max_event_bytes"),
        (
            b().ring_capacity(4096).max_event_bytes(4096),
            "max_event_bytes",
        ),
        (b().max_batch_events(0), "max_batch_events"),
        (b().max_batch_events(1 << 20), "max_batch_events"),
        (
            b().max_batch_delay(Duration::from_secs(2)),
            "max_batch_delay",
        ),
        (
            b().max_batch_events(1)
                .max_batch_delay(Duration::from_millis(1)),
            "max_batch_delay",
        ),
        (b().max_outbound_bytes(1000), "max_outbound_bytes"),
        (b().max_connections(0), "max_connections"),
        (b().max_connections_per_user(0), "max_connections_per_user"),
        (
            b().max_connections(10).max_connections_per_user(11),
            "max_connections_per_user",
        ),
        (b().max_frame_size(10), "max_frame_size"),
        (
            b().max_frame_size(1 << 20).max_message_size(1 << 10),
            "max_message_size",
        ),
        (b().read_buffer_size(10), "read_buffer_size"),
        (b().handshake_timeout(Duration::ZERO), "handshake_timeout"),
        (b().pong_timeout(Duration::ZERO), "pong_timeout"),
        (
            b().close_timeout(Duration::from_secs(3600)),
            "close_timeout",
        ),
        (b().shutdown_timeout(Duration::ZERO), "shutdown_timeout"),
        (
            b().ping_interval(Duration::from_millis(10)),
            "ping_interval",
        ),
        (b().max_offline_users(0), "max_offline_users"),
        (b().history_max_events(2 << 20), "history_max_events"),
        (b().history_max_bytes(1000), "history_max_bytes"),
        (b().history_max_age(Duration::ZERO), "history_max_age"),
        (
            b().shards(4).history_total_bytes(2 << 20),
            "history_total_bytes",
        ),
        (b().breaker_trip_after(Duration::ZERO), "breaker_trip_after"),
        (
            b().history_max_events(0)
                .breaker_cooldown(Duration::from_secs(1)),
            "breaker_cooldown",
        ),
        (
            b().spool_dir("/unused").spool_segment_bytes(1000),
            "spool_segment_bytes",
        ),
        (
            b().spool_dir("/unused")
                .spool_segment_bytes(1 << 20)
                .spool_max_bytes(1 << 20),
            "spool_max_bytes",
        ),
        (
            b().spool_dir("/unused").spool_max_age(Duration::ZERO),
            "spool_max_age",
        ),
        (b().spool_dir(""), "spool_dir"),
        (b().ack_timeout(Duration::ZERO), "ack_timeout"),
        (b().ack_max_pending(1 << 20), "ack_max_pending"),
        (b().receipt_capacity(0), "receipt_capacity"),
        (b().redis_url("redis://127.0.0.1:6379"), "redis_url"),
        (b().engine(floodgate::Engine::Redis), "redis_url"),
        (
            b().engine(floodgate::Engine::Redis)
                .redis_url("http://127.0.0.1:6379"),
            "redis_url",
        ),
        (
            b().engine(floodgate::Engine::Redis)
                .redis_url("redis://127.0.0.1:6379")
                .spool_dir("/unused"),
            "spool_dir",
        ),
        (b().redis_prefix(String::new()), "redis_prefix"),
        (b().redis_prefix("a prefix".into()), "redis_prefix"),
        // Retention of the Redis log: bounded, and only with the Redis engine.
        (b().redis_log_max_bytes(1 << 30), "redis_log_max_bytes"),
        (
            b().redis_log_max_age(Duration::from_secs(60)),
            "redis_log_max_age",
        ),
        (
            b().engine(floodgate::Engine::Redis)
                .redis_url("redis://127.0.0.1:6379")
                .redis_log_max_bytes(1000),
            "redis_log_max_bytes",
        ),
        (
            b().engine(floodgate::Engine::Redis)
                .redis_url("redis://127.0.0.1:6379")
                .redis_log_max_age(Duration::from_millis(10)),
            "redis_log_max_age",
        ),
        (
            b().engine(floodgate::Engine::Redis)
                .redis_url("redis://127.0.0.1:6379")
                .redis_log_max_age(Duration::from_secs(31 * 86400)),
            "redis_log_max_age",
        ),
    ];
    for (i, (builder, setting)) in cases.into_iter().enumerate() {
        assert_eq!(setting_of(builder), setting, "case {i}");
    }
}

#[test]
fn two_jwt_keys_conflict() {
    let b = util::builder().jwt_es256_public_key("/k.pem");
    let Err(Error::Config(e)) = b.build() else {
        panic!("expected a conflict")
    };
    assert_eq!(e.setting, "jwt_es256_public_key");
    assert!(e.reason.contains("conflicts with jwt_hs256_secret"), "{e}");
}

#[test]
fn settings_layers_apply_and_validate_like_setters() {
    let file: Settings =
        toml::from_str("max_batch_events = 1\nmax_batch_delay = \"5ms\"\n").unwrap();
    assert_eq!(
        setting_of(util::builder().settings(file)),
        "max_batch_delay"
    );
    let ok: Settings =
        toml::from_str("max_batch_events = 8\nmax_batch_delay = \"5ms\"\necho = true\n").unwrap();
    util::builder().settings(ok).validate().unwrap();
}

#[test]
fn a_taken_port_is_a_bind_error() {
    let first = util::builder().build().unwrap();
    let err = util::builder()
        .bind(first.local_addr().to_string())
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Bind { .. }), "{err}");
    assert!(err.to_string().contains(&first.local_addr().to_string()));
    first.shutdown().unwrap();
}

#[test]
fn spool_settings_without_a_spool_dir_are_refused_not_ignored() {
    assert_eq!(
        setting_of(util::builder().spool_repair(true)),
        "spool_repair"
    );
    assert_eq!(
        setting_of(util::builder().spool_fsync(floodgate::FsyncPolicy::Always)),
        "spool_fsync"
    );
}

/// Runs `floodgate serve` with `envs` and returns its exit code and stderr.
fn serve_with_env(envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_floodgate"));
    cmd.args(["serve", "--bind", "127.0.0.1:0"]).env(
        "FLOODGATE_JWT_HS256_SECRET",
        "cli-test-secret-cli-test-secret-cli!",
    );
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = util::output_within(&mut cmd, Duration::from_secs(20));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn environment_mistakes_name_the_variable() {
    // A misspelt variable is refused (the TOML file refuses unknown keys too), with the
    // nearest real one.
    let (code, err) = serve_with_env(&[("FLOODGATE_MAX_CONECTIONS", "5")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("FLOODGATE_MAX_CONECTIONS"), "{err}");
    assert!(
        err.contains("did you mean `FLOODGATE_MAX_CONNECTIONS`"),
        "{err}"
    );
    // A bad value names the variable it came from, not the flag nobody typed.
    let (code, err) = serve_with_env(&[("FLOODGATE_MAX_CONNECTIONS", "lots")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("environment variable `FLOODGATE_MAX_CONNECTIONS` = `lots`"),
        "{err}"
    );
    // An engine nobody has.
    let (code, err) = serve_with_env(&[("FLOODGATE_ENGINE", "cluster")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("FLOODGATE_ENGINE") && err.contains("`local` or `redis`"),
        "{err}"
    );
    // The Redis engine without its Redis.
    let (code, err) = serve_with_env(&[("FLOODGATE_ENGINE", "redis")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("redis_url") && err.contains("FLOODGATE_REDIS_URL"),
        "{err}"
    );
    // A set but unusable secret is an error, never a fall back to the dev secret.
    let (code, err) = serve_with_env(&[("FLOODGATE_JWT_HS256_SECRET", "")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("jwt_hs256_secret") && !err.contains("dev secret"),
        "{err}"
    );
}
