//! `torrentguard`: share and fetch files over pinned mutual TLS.
//!
//! A thin shell over the `torrentguard_agent` library: parse flags, set up logging and output,
//! map errors to one clear line and an exit code (0 ok, 1 failure, 2 usage, 130 interrupted).
//! Each concern of the CLI has its own module under `cli/`.

mod cli;

use std::process::ExitCode;

use anyhow::anyhow;

use crate::cli::{Mode, init_logging, parse_cli, print_line, report_failure};

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    init_logging(cli.verbose, cli.quiet, cli.json);
    let mode = Mode::pick(cli.json, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let e = anyhow!(e).context("cannot start the runtime");
            return ExitCode::from(report_failure(mode, &e));
        }
    };
    let result = runtime.block_on(cli::run(cli));
    // Blocking work still running (hashing a file when Ctrl-C came) must not delay the exit.
    runtime.shutdown_background();
    match result {
        Ok(code) => {
            if mode == Mode::Json && code == ExitCode::from(130) {
                print_line(
                    &serde_json::json!({"event": "interrupted", "exit_code": 130}).to_string(),
                );
            }
            code
        }
        Err(e) => ExitCode::from(report_failure(mode, &e)),
    }
}
