//! `rmb-loadtest`: make load identities, run a scenario against relays, report.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rmb_identity::KeyType;
use rmb_loadtest::identities::{self, LoadIdentity};
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
}

#[derive(clap::Args)]
struct RunArgs {
    /// Relay URL, ws://host:port (repeatable: connections are spread over them).
    #[arg(long = "relay", required = true)]
    relays: Vec<String>,
    /// Identities file written by `twins`.
    #[arg(long)]
    identities: PathBuf,
    /// echo | fanout | mailbox | churn | idle
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
        Command::Run(args) => run_scenario(args).await,
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
