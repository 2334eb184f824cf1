//! Settings: flags, environment and the TOML file, with errors that name the setting.

use std::process::Command;

use rmb_relay::{Config, ConfigError};

fn load(args: &[&str]) -> Result<Config, ConfigError> {
    let mut all = vec!["rmb-relay"];
    all.extend_from_slice(args);
    Config::load_from(all.into_iter().map(Into::into).collect())
}

#[test]
fn defaults_are_safe() {
    let c = load(&["--twins", "t.yaml"]).unwrap();
    assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.max_envelope_bytes, 1 << 20);
    assert_eq!(c.max_ttl, 86_400);
    assert_eq!(c.max_token_lifetime, 3600);
    assert_eq!(c.clock_skew, 60);
    assert_eq!((c.ping_interval, c.idle_timeout), (20, 60));
    assert!(c.domains.is_empty());
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
    assert_eq!(c.max_ttl, 600);
    assert_eq!(c.rate_messages, 50);
    assert_eq!(
        c.twins.as_deref(),
        Some(std::path::Path::new("/etc/rmb/twins.yaml"))
    );
    let c = load(&["--config", p, "--max-ttl", "30"]).unwrap();
    assert_eq!(c.max_ttl, 30, "flag beats file");
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
    let err = load(&["--twins", "t.yaml", "--domain", "https://x"]).unwrap_err();
    assert!(err.to_string().contains("domain"), "{err}");
    let err = load(&["--twins", "t.yaml", "--max-ttl", "soon"]).unwrap_err();
    assert!(err.to_string().contains("--max-ttl"), "{err}");
    let err = load(&[]).unwrap_err();
    assert!(err.to_string().contains("twins"), "{err}");
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
