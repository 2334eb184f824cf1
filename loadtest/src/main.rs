//! `rmb-loadtest`: make load identities, run a scenario against relays, report.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rmb_identity::KeyType;
use rmb_loadtest::cpu::{CpuSources, PerEnvelope};
use rmb_loadtest::identities::{self, LoadIdentity};
use rmb_loadtest::rpc;
use rmb_loadtest::scenario::{self, RunConfig, Scenario};

/// Load generator and benchmark reporter for RMB v2 relays.
#[derive(Parser)]
#[command(name = "rmb-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write N deterministic identities: the relay's twins file and the private identities.
    Twins {
        /// How many twins.
        #[arg(long)]
        count: u32,
        /// Seed: the same seed gives the same twins.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// First twin id.
        #[arg(long, default_value_t = 1000)]
        first_id: u32,
        /// Account key type.
        #[arg(long, default_value = "ed25519")]
        key_type: String,
        /// Relay domain to list for every twin.
        #[arg(long)]
        domain: Option<String>,
        /// Twins file for the relay (`--twins`).
        #[arg(long)]
        out: PathBuf,
        /// Private identities for the generator.
        #[arg(long)]
        identities_out: PathBuf,
    },
    /// Run a scenario.
    Run(RunArgs),
    /// A trivial websocket forwarder (the floor relays are compared with): pairs sessions by
    /// the twin in their token, forwards each envelope to its destination twin's session.
    Forwarder {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Relay URL, ws://host:port (repeatable: connections are spread over them).
    #[arg(long = "relay", required = true)]
    relays: Vec<String>,
    /// Identities file written by `twins`.
    #[arg(long)]
    identities: PathBuf,
    /// echo | fanout | mailbox | churn | idle | rpc
    #[arg(long, default_value = "echo")]
    scenario: Scenario,
    /// Envelopes per second to send (requests).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to send, e.g. 30s, 2m, 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Payload bytes per envelope (at least 8).
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// Connections (sessions).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Local source addresses, e.g. 127.0.0.2-127.0.0.50 (for more than ~28k connections).
    #[arg(long)]
    source_ips: Option<String>,
    /// Sign every envelope (costs generator CPU; relays do not check session traffic).
    #[arg(long)]
    sign: bool,
    /// How long to wait for late deliveries after sending stops.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    grace: Duration,
    /// Write the JSON report here.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    html_out: Option<PathBuf>,
    /// Exit 1 if any envelope was lost.
    #[arg(long)]
    require_zero_loss: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// rpc: caller/responder pairs (identities 2i and 2i+1).
    #[arg(long, default_value_t = 16)]
    pairs: usize,
    /// rpc: requests each caller keeps in flight.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// rpc: Nagle's algorithm in the clients (`on`, like the original rmb-peer, or `off`).
    #[arg(long, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    nagle: bool,
    /// rpc: round trips in this first stretch are not recorded.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// rpc: also run the same scenario against a trivial forwarder (`forwarder` subcommand,
    /// started here) and print both side by side.
    #[arg(long)]
    baseline_forwarder: bool,
    /// rpc: a relay's metrics URL, http://host:port/metrics (repeatable), for relay CPU per
    /// envelope from its `process_cpu_seconds_total` before and after the run.
    #[arg(long = "relay-metrics")]
    relay_metrics: Vec<String>,
    /// rpc: a relay's process id (repeatable), for relay CPU per envelope from /proc (when the
    /// relay runs on this machine and has no metrics endpoint to read).
    #[arg(long = "relay-pid")]
    relay_pids: Vec<u32>,
    /// rpc: a Redis node host:port (repeatable), for Redis CPU (`INFO cpu`) and commands
    /// (`INFO commandstats`) per envelope; a Redis Cluster node brings in every node of its
    /// cluster (`CLUSTER NODES`).
    #[arg(long = "redis-node")]
    redis_nodes: Vec<String>,
}

/// Why a duration argument is refused.
#[derive(Debug, thiserror::Error)]
enum DurationError {
    /// Not a number, or too large.
    #[error("bad duration {0:?}")]
    Number(String),
    /// A unit other than `ms`, `s` or `m`.
    #[error("bad duration unit in {0:?}: ms, s or m")]
    Unit(String),
}

/// `1500ms`, `30s`, `30` (seconds) or `2m`.
fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| DurationError::Number(s.to_string()))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(DurationError::Unit(s.to_string())),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| DurationError::Number(s.to_string()))
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?}: on or off")),
    }
}

fn parse_ips(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
                    (a.trim().parse()?, b.trim().parse()?);
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a > 65_536 {
                    bail!("bad address range {part:?}");
                }
                out.extend((a..=b).map(|x| IpAddr::V4(x.into())));
            }
            None => out.push(part.trim().parse()?),
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rmb-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Twins {
            count,
            seed,
            first_id,
            key_type,
            domain,
            out,
            identities_out,
        } => {
            let kt: KeyType = key_type.parse()?;
            let ids = identities::generate(count, seed, first_id, kt);
            std::fs::write(&out, identities::twins_yaml(&ids, kt, domain.as_deref()))
                .with_context(|| format!("writing {}", out.display()))?;
            let private: Vec<LoadIdentity> = ids.into_iter().map(|(l, _)| l).collect();
            identities::write_identities(&identities_out, &private)?;
            eprintln!(
                "wrote {count} twins to {} and {}",
                out.display(),
                identities_out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) if args.scenario == Scenario::Rpc => run_rpc(args).await,
        Command::Run(args) => run_scenario(args).await,
        Command::Forwarder { listen } => {
            rmb_loadtest::forwarder::run(listen).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_scenario(args: RunArgs) -> anyhow::Result<ExitCode> {
    let identities = identities::read_identities(&args.identities)?;
    let source_ips = match &args.source_ips {
        Some(spec) => parse_ips(spec).context("--source-ips")?,
        None => Vec::new(),
    };
    let cfg = RunConfig {
        relays: args.relays,
        identities,
        scenario: args.scenario,
        rate: args.rate,
        duration: args.duration,
        payload_bytes: args.payload_bytes.max(8),
        connections: args.connections,
        source_ips,
        sign: args.sign,
        grace: args.grace,
        progress: !args.quiet,
    };
    let (report, buckets) = scenario::run(cfg).await?;
    print!("{}", report.summary());
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html_out {
        std::fs::write(path, rmb_loadtest::html::render(&report, &buckets))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.require_zero_loss && report.lost > 0 {
        eprintln!("rmb-loadtest: {} envelopes lost", report.lost);
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `cfg`, with what the given sources spent per envelope.
async fn measured_rpc(
    cfg: &rpc::RpcConfig,
    sources: &CpuSources,
) -> anyhow::Result<(rpc::RpcResult, PerEnvelope)> {
    let read = || async {
        if sources.is_empty() {
            return Ok(None);
        }
        sources.read().await.map(Some)
    };
    let before = read().await.context("reading CPU before the run")?;
    let result = rpc::run(cfg).await?;
    let after = read().await.context("reading CPU after the run")?;
    // CPU over the whole run (warm-up included) per envelope over the whole run.
    let envelopes = result.envelopes_per_second() * (cfg.duration + cfg.warmup).as_secs_f64();
    let per_envelope = match (before, after) {
        (Some(b), Some(a)) => b.per_envelope(&a, envelopes),
        _ => PerEnvelope::default(),
    };
    Ok((result, per_envelope))
}

/// Starts `rmb-loadtest forwarder` (this binary) on a free loopback port.
async fn spawn_forwarder() -> anyhow::Result<(tokio::process::Child, String)> {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe().context("locating rmb-loadtest")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["forwarder", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the forwarder")?;
    let stdout = child.stdout.take().context("forwarder stdout")?;
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await?;
    let addr = line
        .trim()
        .strip_prefix("forwarder listening on ")
        .context("forwarder did not report its address")?
        .to_string();
    Ok((child, format!("ws://{addr}")))
}

async fn run_rpc(args: RunArgs) -> anyhow::Result<ExitCode> {
    let identities = identities::read_identities(&args.identities)?;
    let tag = format!(
        "{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ std::process::id())
            .unwrap_or(0)
    );
    let mut cfg = rpc::RpcConfig {
        relays: args.relays.clone(),
        identities,
        pairs: args.pairs,
        window: args.window,
        nagle: args.nagle,
        payload_bytes: args.payload_bytes,
        duration: args.duration,
        warmup: args.warmup,
        tag: tag.clone(),
    };
    println!(
        "rpc: {} pairs, window {}, nagle {}, payload {} B, {:?} after {:?} warm-up, {} relay(s), run tag {tag}",
        args.pairs,
        args.window,
        if args.nagle { "on" } else { "off" },
        args.payload_bytes,
        args.duration,
        args.warmup,
        args.relays.len(),
    );
    let sources = CpuSources::discover(
        args.relay_metrics.clone(),
        args.relay_pids.clone(),
        &args.redis_nodes,
    )
    .await
    .context("--redis-node")?;
    if !sources.redis_nodes.is_empty() {
        println!("redis nodes read: {}", sources.redis_nodes.join(" "));
    }
    let (relay, relay_cpu) = measured_rpc(&cfg, &sources).await?;
    let mut table = rpc::header();
    let (mut fwd_eps, mut fwd_cpu_us) = (None, None);
    table.push_str(&rpc::row("relay", &relay, &relay_cpu));
    if args.baseline_forwarder {
        let (child, url) = spawn_forwarder().await?;
        let forwarder = CpuSources {
            relay_pids: child.id().into_iter().collect(),
            ..CpuSources::default()
        };
        cfg.relays = vec![url];
        cfg.tag = format!("{tag}f");
        let (fwd, fwd_cpu) = measured_rpc(&cfg, &forwarder).await?;
        drop(child);
        fwd_eps = Some(fwd.envelopes_per_second());
        table.push_str(&rpc::row("forwarder", &fwd, &fwd_cpu));
        let q = |r: &rpc::RpcResult, q: f64| r.latency.value_at_quantile(q).max(1) as f64;
        table.push_str(&format!(
            "relay/forwarder: p50 {:.2}x, p99 {:.2}x, throughput {:.2}x\n",
            q(&relay, 0.5) / q(&fwd, 0.5),
            q(&relay, 0.99) / q(&fwd, 0.99),
            relay.envelopes_per_second() / fwd.envelopes_per_second().max(1e-9),
        ));
        if let (Some(r), Some(f)) = (relay_cpu.total_us(), fwd_cpu.total_us()) {
            table.push_str(&format!(
                "CPU per envelope (relay + Redis) / forwarder: {:.1}x\n",
                r / f.max(1e-9)
            ));
        }
        fwd_cpu_us = fwd_cpu.total_us();
    }
    if let Some(commands) = relay_cpu.redis_commands_text() {
        table.push_str(&format!("redis commands per envelope: {commands}\n"));
    }
    if let Some(p) = relay_cpu.relay_precision_percent {
        table.push_str(&format!(
            "relay CPU read in /proc clock ticks (10 ms): within ±{p:.1}% over this run\n"
        ));
    }
    print!("{table}");
    if let Some(path) = &args.json_out {
        let json = serde_json::json!({
            "scenario": "rpc",
            "tag": tag,
            "pairs": args.pairs,
            "window": args.window,
            "nagle": args.nagle,
            "round_trips": relay.latency.len(),
            "envelopes_per_second": relay.envelopes_per_second(),
            "p50_ms": relay.latency.value_at_quantile(0.5) as f64 / 1000.0,
            "p99_ms": relay.latency.value_at_quantile(0.99) as f64 / 1000.0,
            "max_ms": relay.latency.max() as f64 / 1000.0,
            "cpu_us_per_envelope": relay_cpu.total_us(),
            "relay_cpu_us_per_envelope": relay_cpu.relay_us,
            "redis_cpu_us_per_envelope": relay_cpu.redis_us,
            "relay_cpu_precision_percent": relay_cpu.relay_precision_percent,
            "redis_commands_per_envelope": relay_cpu.redis_commands_total(),
            "redis_commands": relay_cpu.redis_commands,
            "forwarder_envelopes_per_second": fwd_eps,
            "forwarder_cpu_us_per_envelope": fwd_cpu_us,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if relay.latency.is_empty() {
        eprintln!("rmb-loadtest: no round trip completed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
