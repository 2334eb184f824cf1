//! `rmbctl ping|call|listen` run as processes against a relay running in the test process.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Output, Stdio};
use std::time::Duration;

use rmb_identity::KeyType;
use rmb_testkit::relay::TestRelay;
use rmb_testkit::twins::{twins, TestTwin};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longest a single rmbctl run may take before the test fails.
const LIMIT: Duration = Duration::from_secs(60);

fn rmbctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rmbctl"));
    cmd.env_remove("RMB_MNEMONIC")
        .env_remove("RMB_RELAY")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// The arguments that make rmbctl act as `twin` on `relay`.
fn session(relay: &TestRelay, twin: &TestTwin) -> Vec<String> {
    let key_type = match twin.signer.key_type() {
        KeyType::Ed25519 => "ed25519",
        KeyType::Sr25519 => "sr25519",
    };
    [
        "--relay",
        relay.url.as_str(),
        "--mnemonic",
        twin.secret.as_str(),
        "--key-type",
        key_type,
        "--twin",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([twin.id.to_string()])
    .collect()
}

async fn run(args: &[String]) -> Output {
    let child = rmbctl()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rmbctl starts");
    finish(child).await
}

async fn finish(child: Child) -> Output {
    tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("rmbctl finishes in time")
        .expect("rmbctl output")
}

fn args(session: &[String], rest: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = rest.iter().take(1).map(|s| s.to_string()).collect();
    all.extend(session.iter().cloned());
    all.extend(rest.iter().skip(1).map(|s| s.to_string()));
    all
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn json_lines(out: &Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_prints_the_round_trip_time() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    for twin in &ts {
        let out = run(&args(&session(&relay, twin), &["ping", "--json"])).await;
        assert!(out.status.success(), "{}", stderr(&out));
        let report = &json_lines(&out)[0];
        assert_eq!(report["uid"].as_str().map(str::len), Some(36));
        let rtt = report["rtt_ms"].as_f64().expect("rtt_ms is a number");
        assert!(rtt > 0.0 && rtt < 10_000.0, "{rtt}");
    }
    let human = run(&args(&session(&relay, &ts[0]), &["ping"])).await;
    assert!(human.status.success());
    assert!(stdout(&human).contains("rtt_ms"), "{}", stdout(&human));
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_echoes_what_call_sends() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let listener = rmbctl()
        .args(args(
            &session(&relay, &ts[1]),
            &["listen", "--count", "2", "--json"],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("listen starts");

    let caller = session(&relay, &ts[0]);
    let human = run(&args(
        &caller,
        &[
            "call",
            "--dst",
            "2",
            "--command",
            "demo.echo",
            "--data",
            r#"{"hello":"world"}"#,
        ],
    ))
    .await;
    assert!(human.status.success(), "{}", stderr(&human));
    assert_eq!(stdout(&human), "{\"hello\":\"world\"}\n");

    let json = run(&args(
        &caller,
        &[
            "call",
            "--dst",
            "2",
            "--command",
            "demo.second",
            "--data",
            "[1, 2]",
            "--json",
        ],
    ))
    .await;
    assert!(json.status.success(), "{}", stderr(&json));
    let answer = &json_lines(&json)[0];
    assert_eq!(answer["kind"], "response");
    assert_eq!(answer["payload"], "[1, 2]");
    assert_eq!(answer["source"]["twin"], 2);

    let listened = finish(listener).await;
    assert!(listened.status.success(), "{}", stderr(&listened));
    let lines = json_lines(&listened);
    assert_eq!(lines.len(), 2, "{}", stdout(&listened));
    assert_eq!(lines[0]["kind"], "request");
    assert_eq!(lines[0]["command"], "demo.echo");
    assert_eq!(lines[0]["source"]["twin"], 1);
    assert_eq!(lines[0]["payload"], r#"{"hello":"world"}"#);
    assert_eq!(lines[1]["command"], "demo.second");
    assert_eq!(lines[1]["uid"], answer["uid"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_prints_one_line_per_envelope_and_no_echo_leaves_callers_waiting() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut listener = rmbctl()
        .args(args(
            &session(&relay, &ts[1]),
            &["listen", "--count", "1", "--no-echo"],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("listen starts");
    // The banner comes once the session is open: the short-lived request cannot expire in
    // the mailbox while the listener is still starting.
    let mut banner = String::new();
    let stderr_pipe = listener.stderr.take().expect("stderr is piped");
    tokio::time::timeout(LIMIT, BufReader::new(stderr_pipe).read_line(&mut banner))
        .await
        .expect("listen connects in time")
        .expect("stderr readable");
    assert!(banner.starts_with("listening as twin 2"), "{banner}");
    let call = run(&args(
        &session(&relay, &ts[0]),
        &[
            "call",
            "--dst",
            "2",
            "--command",
            "demo.quiet",
            "--data",
            "{\n\"multi\": \"line\"\n}",
            "--timeout",
            "1",
        ],
    ))
    .await;
    assert_eq!(call.status.code(), Some(1));
    assert!(stderr(&call).contains("no answer"), "{}", stderr(&call));

    let listened = finish(listener).await;
    assert!(listened.status.success());
    let text = stdout(&listened);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("request "), "{text}");
    assert!(text.contains("from=1 command=demo.quiet"), "{text}");
    assert!(text.contains(r#"payload={\n"multi": "line"\n}"#), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn call_to_an_unknown_twin_exits_1_with_code_103() {
    let ts = twins(1, 1);
    let relay = TestRelay::start(&ts, &[]).await;
    let me = session(&relay, &ts[0]);
    let call = ["call", "--dst", "77", "--command", "x.y", "--data", "{}"];
    let human = run(&args(&me, &call)).await;
    assert_eq!(human.status.code(), Some(1));
    assert!(
        stderr(&human).contains("error 103: unknown destination twin 77"),
        "{}",
        stderr(&human)
    );
    assert!(stdout(&human).is_empty());

    let mut with_json = call.to_vec();
    with_json.push("--json");
    let json = run(&args(&me, &with_json)).await;
    assert_eq!(json.status.code(), Some(1));
    let answer = &json_lines(&json)[0];
    assert_eq!(answer["kind"], "error");
    assert_eq!(answer["code"], 103);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_network_input_fails_with_a_reason() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts[..1], &[]).await;
    // Data that is not JSON is refused before connecting.
    let out = run(&args(
        &session(&relay, &ts[0]),
        &["call", "--dst", "2", "--command", "x", "--data", "{oops"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not valid JSON"), "{}", stderr(&out));
    // A twin the relay does not know cannot open a session.
    let out = run(&args(&session(&relay, &ts[1]), &["ping", "--json"])).await;
    assert_eq!(out.status.code(), Some(1));
    let error = json_lines(&out)[0]["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        error.contains("401") && error.contains("unknown twin"),
        "{error}"
    );
    // wss:// is refused clearly.
    let mut wss = session(&relay, &ts[0]);
    wss[1] = "wss://relay.example".into();
    let out = run(&args(&wss, &["ping"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("wss://"), "{}", stderr(&out));
}
