//! The `skiff` command: CLI parsing, wiring and error reporting.

mod cli;
mod container;
mod context;
mod images;
mod logs;
mod monitor;
mod progress;
mod proxy;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_tracing(cli.debug);
    match cli::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One clear line: the outermost context and its causes, joined.
            eprintln!("skiff: {}", error_chain(&e));
            ExitCode::from(125)
        }
    }
}

/// `a: b: c` from an anyhow chain, without repeating a cause that the
/// outer message already quotes.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

fn init_tracing(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
