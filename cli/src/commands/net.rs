//! `rmbctl ping|call|listen`: talk to a relay as a twin.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use rmb_identity::KeyType;
use rmb_peer::direct::{remote_error, DirectClient};
use rmb_proto::{codes, Address, Envelope, Kind, Message, Payload};
use serde_json::{json, Value};

use super::SecretArgs;
use crate::input::text_arg;
use crate::output::Output;

/// Who we are on the relay: shared by every network command.
#[derive(clap::Args)]
pub struct SessionArgs {
    /// Relay websocket URL, for example ws://127.0.0.1:8080 (wss:// is not supported yet).
    #[arg(long, env = "RMB_RELAY")]
    relay: String,
    #[command(flatten)]
    secret: SecretArgs,
    /// The key type registered on chain for our twin.
    #[arg(short = 'k', long, default_value = "sr25519")]
    key_type: KeyType,
    /// OUR twin id: the twin the mnemonic belongs to.
    #[arg(long)]
    twin: u32,
    /// Our session id, when the twin runs several sessions.
    #[arg(long)]
    sid: Option<String>,
}

impl SessionArgs {
    async fn connect(&self) -> anyhow::Result<DirectClient> {
        let signer = self.secret.signer(self.key_type)?;
        DirectClient::connect(&self.relay, signer, self.twin, self.sid.clone())
            .await
            .with_context(|| format!("connecting to {} as twin {}", self.relay, self.twin))
    }
}

#[derive(clap::Args)]
pub struct PingArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// Seconds to wait for the pong.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

#[derive(clap::Args)]
pub struct CallArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// The DESTINATION twin id (--twin is our own id).
    #[arg(long)]
    dst: u32,
    /// The destination session id.
    #[arg(long)]
    dst_sid: Option<String>,
    /// The command to call, for example demo.echo.
    #[arg(long)]
    command: String,
    /// The request payload: a JSON document ("-" reads standard input).
    #[arg(long)]
    data: String,
    /// Seconds to wait for the answer; also the request's time to live.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(clap::Args)]
pub struct ListenArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// Do not answer requests (by default every request gets a response with its own payload).
    #[arg(long)]
    no_echo: bool,
    /// Exit after this many envelopes (default: run until Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
}

pub fn ping(args: PingArgs, out: &Output) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let timeout = Duration::from_secs(args.timeout);
        let mut client = args.session.connect().await?;
        let ping = client.ping();
        let started = Instant::now();
        client.send(&ping).await?;
        let answer = client
            .wait_for(&ping.uid, timeout)
            .await
            .context("waiting for the pong")?;
        let rtt = started.elapsed();
        let _ = client.close().await;
        if let Some((code, message)) = remote_error(&answer) {
            anyhow::bail!("relay refused the ping: error {code}: {message}");
        }
        out.report(&json!({ "uid": ping.uid, "rtt_ms": millis(rtt) }));
        Ok(ExitCode::SUCCESS)
    })
}

pub fn call(args: CallArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let data = text_arg(&args.data)?;
    serde_json::from_str::<Value>(&data).context("--data is not valid JSON")?;
    runtime()?.block_on(async {
        let timeout = Duration::from_secs(args.timeout);
        let mut client = args.session.connect().await?;
        let dst = Address::new(args.dst, args.dst_sid.clone());
        let answer = client
            .call(dst, &args.command, data.into_bytes(), timeout)
            .await;
        let _ = client.close().await;
        let answer = answer.with_context(|| format!("calling twin {}", args.dst))?;
        if out.is_json() {
            println!("{}", describe(&answer));
        }
        match remote_error(&answer) {
            Some((code, message)) => {
                if !out.is_json() {
                    eprintln!("error {code}: {message}");
                }
                Ok(ExitCode::from(1))
            }
            None => {
                if !out.is_json() {
                    // Text as is; binary or encrypted payloads as hex.
                    let (text, hex) = payload_text(&answer);
                    println!("{}", text.or(hex).unwrap_or_default());
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

pub fn listen(args: ListenArgs, out: &Output) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = args.session.connect().await?;
        if !out.is_json() {
            eprintln!(
                "listening as twin {} on {} (Ctrl-C to stop)",
                args.session.twin, args.session.relay
            );
        }
        let stop = tokio::signal::ctrl_c();
        tokio::pin!(stop);
        let mut seen = 0u64;
        while args.count.is_none_or(|count| seen < count) {
            let env = tokio::select! {
                env = client.recv() => env.context("reading from the relay")?,
                signal = &mut stop => {
                    signal.context("waiting for Ctrl-C")?;
                    break;
                }
            };
            seen += 1;
            if out.is_json() {
                println!("{}", describe(&env));
            } else {
                println!("{}", line(&env));
            }
            if !args.no_echo && env.kind() == Kind::Request {
                let answer = match &env.payload {
                    Some(Payload::Cipher(_)) => client.error_to(
                        &env,
                        codes::CRYPTO,
                        "rmbctl listen does not decrypt end-to-end encrypted payloads",
                    ),
                    Some(Payload::Plain(data)) => client.response_to(&env, data.clone()),
                    None => client.response_to(&env, Vec::new()),
                };
                client.send(&answer).await.context("sending the echo")?;
            }
        }
        client.close().await.context("closing the session")?;
        Ok(ExitCode::SUCCESS)
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Milliseconds with microsecond precision.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// The payload as text when it is plain UTF-8, and as hex otherwise (binary or encrypted).
fn payload_text(env: &Envelope) -> (Option<String>, Option<String>) {
    match &env.payload {
        Some(Payload::Plain(p)) => match std::str::from_utf8(p) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(hex::encode(p))),
        },
        Some(Payload::Cipher(c)) => (None, Some(hex::encode(c))),
        None => (None, None),
    }
}

/// One envelope as a JSON object: what `listen --json` and `call --json` print.
fn describe(env: &Envelope) -> Value {
    let (text, hex) = payload_text(env);
    let mut v = json!({
        "uid": env.uid,
        "kind": env.kind().as_str(),
        "source": env.source.as_ref().map(|a| json!({ "twin": a.twin, "connection": a.connection })),
        "payload": text,
    });
    match &env.message {
        Some(Message::Request(r)) => v["command"] = json!(r.command),
        Some(Message::Error(e)) => {
            v["code"] = json!(e.code);
            v["message"] = json!(e.message);
        }
        _ => {}
    }
    if let Some(hex) = hex {
        v["payload_hex"] = json!(hex);
        v["encrypted"] = json!(matches!(env.payload, Some(Payload::Cipher(_))));
    }
    v
}

/// One envelope as one human-readable line.
fn line(env: &Envelope) -> String {
    let from = match &env.source {
        Some(Address {
            twin,
            connection: Some(sid),
        }) => format!("{twin}/{sid}"),
        Some(a) => a.twin.to_string(),
        None => "relay".to_string(),
    };
    let mut text = format!("{:<8} uid={} from={from}", env.kind().as_str(), env.uid);
    match &env.message {
        Some(Message::Request(r)) => text.push_str(&format!(" command={}", r.command)),
        Some(Message::Error(e)) => {
            text.push_str(&format!(" code={} message={}", e.code, e.message));
        }
        _ => {}
    }
    match payload_text(env) {
        (Some(payload), _) => {
            // Keep one envelope on one line whatever the payload holds.
            let payload = payload.replace('\n', "\\n").replace('\r', "\\r");
            text.push_str(&format!(" payload={payload}"));
        }
        (None, Some(hex)) => text.push_str(&format!(" payload_hex={hex}")),
        (None, None) => {}
    }
    text
}
