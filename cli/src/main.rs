//! `rmbctl`: the RMB operator and developer command line.
//!
//! Every command prints a human-readable report, or one JSON object with `--json` (`listen`
//! prints one line or one JSON object per envelope), and exits non-zero on failure: 1 when a
//! check fails or input is bad, 2 on usage errors.

mod commands;
mod input;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// RMB operator and developer CLI.
#[derive(Parser)]
#[command(name = "rmbctl", version, about)]
struct Cli {
    /// Print one JSON object instead of a human-readable report.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Derive a twin's public keys from a mnemonic or hex seed, or generate a new mnemonic.
    Keys(commands::keys::Args),
    /// Send an envelope ping to a relay and print the round-trip time.
    Ping(commands::net::PingArgs),
    /// Call a command on another twin through a relay and print the answer.
    ///
    /// --twin is OUR twin id (the twin the mnemonic belongs to); --dst is the twin called.
    /// Prints the response payload, or the error code and message and exits 1.
    Call(commands::net::CallArgs),
    /// Print every envelope that reaches our twin, answering requests with their own payload.
    ///
    /// One line per envelope (JSON lines with --json). Runs until Ctrl-C, or until --count
    /// envelopes were received.
    Listen(commands::net::ListenArgs),
    /// Decode or verify protobuf envelopes.
    #[command(subcommand)]
    Envelope(commands::envelope::Command),
    /// Issue or verify session tokens (JWT).
    #[command(subcommand)]
    Token(commands::token::Command),
    /// End-to-end encrypt or decrypt a payload between two twins.
    #[command(subcommand)]
    E2e(commands::e2e::Command),
    /// Generate, rotate or show a relay's federation identity key file.
    #[command(subcommand)]
    RelayKey(commands::relay_key::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = output::Output::new(cli.json);
    let result = match cli.command {
        Command::Keys(args) => commands::keys::run(args, &out),
        Command::Ping(args) => commands::net::ping(args, &out),
        Command::Call(args) => commands::net::call(args, &out),
        Command::Listen(args) => commands::net::listen(args, &out),
        Command::Envelope(cmd) => commands::envelope::run(cmd, &out),
        Command::Token(cmd) => commands::token::run(cmd, &out),
        Command::E2e(cmd) => commands::e2e::run(cmd, &out),
        Command::RelayKey(cmd) => commands::relay_key::run(cmd, &out),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            out.error(&err);
            ExitCode::from(1)
        }
    }
}
