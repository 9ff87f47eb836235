//! Errors to exit codes and the one line that reports them.

use torrentguard_agent::{AgentError, DownloadError};

use super::render::{Mode, print_line, printable};

/// Reports the error that ends the process and returns its exit code. In JSON mode it is the
/// stream's last event (`interrupted` or `error`, with the exit code), logged on stderr as JSON.
pub(crate) fn report_failure(mode: Mode, e: &anyhow::Error) -> u8 {
    let code = exit_code_of(e);
    let message = printable(&one_line(e)).into_owned();
    if mode == Mode::Json {
        tracing::error!("{message}");
        let event = if code == 130 { "interrupted" } else { "error" };
        print_line(
            &serde_json::json!({"event": event, "message": message, "exit_code": code}).to_string(),
        );
    } else {
        eprint_line(&format!("error: {message}"));
    }
    code
}

/// Reports an error the process goes on after (e.g. one of several downloads failed): one line
/// on stderr, or an `error` event without `exit_code` in JSON mode.
pub(crate) fn report_error(mode: Mode, e: &anyhow::Error) {
    let message = printable(&one_line(e)).into_owned();
    if mode == Mode::Json {
        tracing::error!("{message}");
        print_line(&serde_json::json!({"event": "error", "message": message}).to_string());
    } else {
        eprint_line(&format!("error: {message}"));
    }
}

/// `eprintln!` without its panic when stderr is closed: there is nobody left to tell.
fn eprint_line(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s
}

pub(crate) fn exit_code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(AgentError::Download(DownloadError::Interrupted)) =
            cause.downcast_ref::<AgentError>()
        {
            return 130;
        }
        if let Some(DownloadError::Interrupted) = cause.downcast_ref::<DownloadError>() {
            return 130;
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return 2;
        }
    }
    1
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// The exit code of an interrupted command.
pub(crate) const INTERRUPTED: u8 = 130;

pub(crate) fn is_interrupted(e: &anyhow::Error) -> bool {
    exit_code_of(e) == INTERRUPTED
}
