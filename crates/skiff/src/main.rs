//! The `skiff` command: CLI parsing, wiring and error reporting.

mod build;
mod cli;
mod client;
mod container;
mod context;
mod images;
mod logs;
mod monitor;
mod progress;
mod proxy;
mod serve;
mod spawn;
mod trash;

use std::process::ExitCode;

use clap::Parser;

/// Exit status for failures of skiff itself (not of a container), as
/// `docker run` uses it, so it is not mistaken for a container's own code.
const EXIT_SKIFF_ERROR: u8 = 125;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap's usage errors span several lines; keep the one that says what was wrong.
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("skiff: {}", line.trim_start_matches("error: "));
            return ExitCode::from(EXIT_SKIFF_ERROR);
        }
    };
    init_tracing(cli.debug);
    let is_run = matches!(cli.command, cli::Command::Run(_));
    match cli::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One clear line: the outermost context and its causes, joined.
            eprintln!("skiff: {}", error_chain(&e));
            ExitCode::from(if is_run { EXIT_SKIFF_ERROR } else { 1 })
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
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
