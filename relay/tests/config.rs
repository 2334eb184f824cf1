//! Settings: flags, environment and the TOML file, with errors that name the setting.

use std::process::Command;

use rmb_relay::{Config, ConfigError};

fn load(args: &[&str]) -> Result<Config, ConfigError> {
    let mut all = vec!["rmb-relay"];
    all.extend_from_slice(args);
    Config::load_from(all.into_iter().map(Into::into).collect())
}

#[test]
fn default_values() {
    let c = load(&["--twins", "t.yaml"]).unwrap();
    assert_eq!(c.listen.addr.to_string(), "[::]:8080");
    assert_eq!(
        c.limits.max_envelope_bytes,
        16 << 20,
        "the original relay's and peer's frame limit"
    );
    assert_eq!(c.limits.max_ttl, 86_400);
    assert_eq!(c.limits.clock_skew, 60);
    assert_eq!((c.listen.ping_interval, c.listen.idle_timeout), (20, 60));
    assert_eq!(c.listen.write_timeout, 30);
    assert!(c.domains.is_empty());
}

/// The defaults in action on a running relay: every token lifetime a known client issues
/// (rmb-peer 60 and 300 s, the Go SDK 60 s, the TypeScript client 1000 s) is accepted, a
/// longer-lived one is refused, and an unencrypted chain endpoint off this host is refused
/// at start while a loopback one (local test chains) is accepted.
#[tokio::test]
async fn defaults_take_every_known_client_and_refuse_long_tokens_and_plain_remote_chains() {
    use rmb_identity::{issue_token, Claims};
    use rmb_testkit::client::WsClient;
    use rmb_testkit::relay::TestRelay;
    let ts = rmb_testkit::twins::twins(1, 1);
    let relay = TestRelay::start(&ts, &[]).await;
    let now = rmb_proto::unix_now();
    let token = |lifetime: u64| issue_token(&ts[0].signer, &Claims::new(1, now, now + lifetime));
    for lifetime in [60, 300, 1000] {
        WsClient::connect_raw(&relay.url, &token(lifetime))
            .await
            .unwrap_or_else(|e| panic!("a {lifetime} s token is refused by default: {e}"));
    }
    match WsClient::connect_raw(&relay.url, &token(3600)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("an hour-long token must be refused by default: {other:?}"),
    }
    let plain_remote = load(&["--substrate", "ws://tfchain.example:9944"]).unwrap_err();
    assert!(
        plain_remote.to_string().contains("substrate"),
        "{plain_remote}"
    );
    load(&["--substrate", "ws://127.0.0.1:9944"]).expect("loopback ws:// is accepted");
    load(&["--substrate", "ws://[::1]:9944"]).expect("loopback ws:// is accepted");
    load(&[
        "--substrate",
        "ws://tfchain.example:9944",
        "--substrate-insecure",
    ])
    .expect("--substrate-insecure accepts it");
    load(&["--substrate", "wss://tfchain.example:443"]).expect("wss:// is accepted");
}

#[test]
fn file_values_apply_and_flags_override_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        "twins = \"/etc/rmb/twins.yaml\"\ndomains = [\"a.example\", \"b.example\"]\nmax_ttl = 600\nrate-messages = 50\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let c = load(&["--config", p]).unwrap();
    assert_eq!(c.domains, vec!["a.example", "b.example"]);
    assert_eq!(c.limits.max_ttl, 600);
    assert_eq!(c.limits.rate_messages, 50);
    assert_eq!(
        c.directory.twins.as_deref(),
        Some(std::path::Path::new("/etc/rmb/twins.yaml"))
    );
    let c = load(&["--config", p, "--max-ttl", "30"]).unwrap();
    assert_eq!(c.limits.max_ttl, 30, "flag beats file");
}

#[test]
fn bad_settings_name_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, "twins = \"t.yaml\"\nmax_tll = 5\n").unwrap();
    let err = load(&["--config", path.to_str().unwrap()]).unwrap_err();
    assert!(
        err.to_string().contains("unknown setting `max_tll`"),
        "{err}"
    );

    std::fs::write(&path, "twins = [\"t.yaml\"\n").unwrap();
    let err = load(&["--config", path.to_str().unwrap()]).unwrap_err();
    assert!(matches!(err, ConfigError::File { .. }), "{err}");

    let err = load(&["--twins", "t.yaml", "--max-envelope-bytes", "0"]).unwrap_err();
    assert!(err.to_string().contains("max-envelope-bytes"), "{err}");
    let err = load(&["--twins", "t.yaml", "--idle-timeout", "10"]).unwrap_err();
    assert!(err.to_string().contains("idle-timeout"), "{err}");
    let err = load(&["--twins", "t.yaml", "--write-timeout", "0"]).unwrap_err();
    assert!(err.to_string().contains("write-timeout"), "{err}");
    let err = load(&["--twins", "t.yaml", "--domain", "https://x"]).unwrap_err();
    assert!(err.to_string().contains("domain"), "{err}");
    let err = load(&["--twins", "t.yaml", "--max-ttl", "soon"]).unwrap_err();
    assert!(err.to_string().contains("--max-ttl"), "{err}");
    let err = load(&["--twins", "t.yaml", "--substrate", "wss://x:443"]).unwrap_err();
    assert!(err.to_string().contains("substrate"), "{err}");
    let err = load(&["--twins", "t.yaml", "--limit", "0", "10"]).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    let err = load(&["--twins", "t.yaml", "--limit", "5"]).unwrap_err();
    assert!(err.to_string().contains("--limit"), "{err}");
    let err = load(&["--twins", "t.yaml", "-w", "0"]).unwrap_err();
    assert!(err.to_string().contains("workers"), "{err}");
    let err = load(&["--twins", "t.yaml", "--ranker-period", "0"]).unwrap_err();
    assert!(err.to_string().contains("ranker-period"), "{err}");
    let err = load(&["--twins", "t.yaml", "--listen", ":http"]).unwrap_err();
    assert!(err.to_string().contains("--listen"), "{err}");
    std::fs::write(&path, "twins = \"t.yaml\"\ndebug = 2\n").unwrap();
    let err = load(&["--config", path.to_str().unwrap()]).unwrap_err();
    assert!(err.to_string().contains("set `log`"), "{err}");
}

#[test]
fn without_a_directory_the_twins_come_from_tfchain_mainnet() {
    let c = load(&[]).unwrap();
    assert_eq!(c.directory.substrate, vec!["wss://tfchain.grid.tf:443"]);
    assert!(c.directory.twins.is_none());
    assert!(
        c.backplane.redis.is_none(),
        "no Redis unless given: the in-memory backplane"
    );
    assert!(
        c.notes.iter().any(|n| n.contains("mainnet")),
        "{:?}",
        c.notes
    );
    let c = load(&["--twins", "t.yaml"]).unwrap();
    assert!(
        c.directory.substrate.is_empty(),
        "a twins file is the directory, not mainnet"
    );
}

#[test]
fn the_original_relay_flags_map_onto_settings() {
    let c = load(&[
        "-m",
        "r1.example",
        "r2.example",
        "-r",
        "redis://10.0.0.5:6379",
        "-s",
        "wss://a.example:443",
        "wss://b.example:443",
        "-u",
        "1000",
        "-w",
        "500",
        "-l",
        "0.0.0.0:80",
        "-dd",
        "-p",
        "1800",
        "--catchup-threshold",
        "600",
        "--limit",
        "120",
        "4096",
    ])
    .unwrap();
    assert_eq!(c.domains, vec!["r1.example", "r2.example"]);
    assert_eq!(c.backplane.redis.as_deref(), Some("redis://10.0.0.5:6379"));
    assert_eq!(
        c.directory.substrate,
        vec!["wss://a.example:443", "wss://b.example:443"]
    );
    assert_eq!(c.listen.addr.to_string(), "0.0.0.0:80");
    assert_eq!(
        c.listen.max_connections, 500_000,
        "workers x users per worker"
    );
    assert!(
        c.telemetry.log.contains("rmb_relay=trace"),
        "{}",
        c.telemetry.log
    );
    assert!(
        c.telemetry.log.starts_with("info,"),
        "libraries stay at info: {}",
        c.telemetry.log
    );
    assert_eq!(c.federation.ranker_period, 1800);
    let (messages, bytes) = c.limits.twin_rates();
    assert_eq!((messages.burst, bytes.burst), (120.0, 4096.0));
    assert!((messages.per_second - 2.0).abs() < 1e-9, "120 a minute");
    assert!(c
        .notes
        .iter()
        .any(|n| n.contains("--catchup-threshold 600")));
    assert!(c.notes.iter().any(|n| n.contains("--workers 500")));

    let c = load(&["--twins", "t.yaml", "-d"]).unwrap();
    assert!(
        c.telemetry.log.contains("rmb_relay=debug"),
        "{}",
        c.telemetry.log
    );
    let c = load(&["--twins", "t.yaml", "-d", "--log", "warn"]).unwrap();
    assert_eq!(c.telemetry.log, "warn", "an explicit --log wins over -d");
    let c = load(&["--twins", "t.yaml", "-w", "10", "--max-connections", "77"]).unwrap();
    assert_eq!(
        c.listen.max_connections, 77,
        "an explicit --max-connections wins"
    );
    let c = load(&["--twins", "t.yaml", "-u", "3"]).unwrap();
    assert_eq!(
        c.listen.max_connections, 1500,
        "-w defaults to 500 as in the original"
    );
}

#[test]
fn domains_and_endpoints_are_split_on_spaces_and_commas() {
    for args in [
        &["--domain", "a.example", "b.example"][..],
        &["--domain", "a.example b.example"],
        &["--domain", "a.example,b.example"],
        &["--domain", "a.example", "--domain", "b.example"],
        &["-m", "a.example, b.example"],
    ] {
        let mut all = vec!["--twins", "t.yaml"];
        all.extend_from_slice(args);
        let c = load(&all).unwrap();
        assert_eq!(c.domains, vec!["a.example", "b.example"], "{args:?}");
    }
    let c = load(&["-s", "ws://a:1 ws://b:2", "--substrate-insecure"]).unwrap();
    assert_eq!(c.directory.substrate, vec!["ws://a:1", "ws://b:2"]);
}

#[test]
fn listen_takes_a_bare_port_for_every_address() {
    let c = load(&["--twins", "t.yaml", "-l", ":9090"]).unwrap();
    assert_eq!(c.listen.addr.to_string(), "[::]:9090");
    let c = load(&["--twins", "t.yaml", "--listen", "[::1]:7"]).unwrap();
    assert_eq!(c.listen.addr.to_string(), "[::1]:7");
    let c = load(&["--twins", "t.yaml", "--listen", "localhost:7"]).unwrap();
    assert_eq!(c.listen.addr.port(), 7);
}

#[test]
fn limits_default_above_what_the_original_allowed() {
    let c = load(&["--twins", "t.yaml"]).unwrap();
    assert_eq!(c.limits.max_envelope_bytes, 16 << 20);
    assert_eq!(c.limits.max_sessions_per_twin, 1024);
    let (messages, bytes) = c.limits.twin_rates();
    assert_eq!((messages.per_second, messages.burst), (10_000.0, 20_000.0));
    assert!(
        bytes.burst >= c.limits.max_envelope_bytes as f64,
        "the largest envelope must fit the byte burst"
    );
    assert!(c.federation.federation_max_request_bytes > c.limits.max_envelope_bytes);
    // The byte budgets take at least two envelopes of the largest size each.
    for budget in [
        c.limits.mailbox_max_bytes,
        c.limits.pod_queue_max_bytes,
        c.limits.unused_sid_mailbox_bytes,
    ] {
        assert!(budget >= 2 * c.limits.max_envelope_bytes as u64, "{budget}");
    }
}

#[test]
fn byte_budgets_below_the_largest_envelope_are_refused_by_name() {
    for setting in [
        "--mailbox-max-bytes",
        "--pod-queue-max-bytes",
        "--unused-sid-mailbox-bytes",
    ] {
        let err = load(&["--twins", "t.yaml", setting, "1000"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&setting[2..]) && text.contains("max-envelope-bytes"),
            "{text}"
        );
        assert!(load(&[
            "--twins",
            "t.yaml",
            "--max-envelope-bytes",
            "1000",
            setting,
            "1000"
        ])
        .is_ok());
    }
    for setting in ["--unused-sid-mailbox-max", "--recent-sid-seconds"] {
        let err = load(&["--twins", "t.yaml", setting, "0"]).unwrap_err();
        assert!(err.to_string().contains(&setting[2..]), "{err}");
    }
}

#[test]
fn environment_sets_values_below_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_rmb-relay"))
        .args(["--check-config", "--twins", "t.yaml", "--rate-bytes", "77"])
        .env("RMB_MAX_TTL", "123")
        .env("RMB_RATE_BYTES", "999")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_ttl = 123"), "{text}");
    assert!(text.contains("rate_bytes = 77"), "{text}");
}

#[test]
fn invalid_config_exits_non_zero_with_the_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_rmb-relay"))
        .args(["--twins", "t.yaml", "--ping-interval", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ping-interval"));

    let out = Command::new(env!("CARGO_BIN_EXE_rmb-relay"))
        .args([
            "--twins",
            "/nonexistent/twins.yaml",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("twins file"));
}

#[test]
fn check_config_masks_the_redis_password() {
    let out = Command::new(env!("CARGO_BIN_EXE_rmb-relay"))
        .args(["--check-config", "--twins", "t.yaml"])
        .env("RMB_REDIS", "redis://relay:hunter2@10.0.0.1:6379")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("redis://relay:***@10.0.0.1:6379"), "{text}");
    assert!(text.contains("log_format = \"text\""), "{text}");
}

#[test]
fn check_config_masks_a_redis_password_holding_at_signs() {
    let out = Command::new(env!("CARGO_BIN_EXE_rmb-relay"))
        .args(["--check-config", "--twins", "t.yaml"])
        .env("RMB_REDIS", "redis://relay:hun@ter@2@10.0.0.1:6379")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("ter@2"), "{text}");
    assert!(text.contains("redis://relay:***@10.0.0.1:6379"), "{text}");
}

#[test]
fn check_config_shows_the_defaults_of_a_bare_domain_command_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_rmb-relay"))
        .args(["--domain", "relay.example", "--check-config"])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let effective: toml::Table = text.parse().expect("valid TOML");
    assert_eq!(effective["listen"].as_str(), Some("[::]:8080"));
    assert_eq!(effective["substrate"].as_array().map(|a| a.len()), Some(1));
    assert_eq!(
        effective["substrate"][0].as_str(),
        Some("wss://tfchain.grid.tf:443")
    );
    assert!(effective.get("redis").is_none(), "{text}");
    assert_eq!(effective["federation"].as_bool(), Some(true));
    assert_eq!(effective["ranker_period"].as_integer(), Some(3600));
    assert!(text.contains("# no --twins or --substrate"), "{text}");
}
