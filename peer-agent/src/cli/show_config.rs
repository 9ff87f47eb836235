//! `torrentguard config`: the effective settings and where each comes from.

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

use super::args::Cli;
use super::config::{Effective, Settings, effective};
use super::render::{Mode, print_line, printable};

pub(crate) fn show(settings: &Settings, data_dir: &Path, mode: Mode) -> ExitCode {
    let mut rows = effective(&Cli::command(), settings, |name| std::env::var_os(name));
    // The data directory's built-in default is the platform's, computed rather than declared.
    for r in rows.iter_mut() {
        if r.key == "data_dir" && r.value.is_none() {
            r.value = Some(data_dir.display().to_string());
        }
    }
    if mode == Mode::Json {
        let settings_json: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|r| {
                let v = serde_json::json!({"value": r.value, "source": r.source});
                (r.key.to_string(), v)
            })
            .collect();
        print_line(
            &serde_json::json!({
                "event": "config",
                "config_file": settings.path,
                "config_file_found": settings.found,
                "settings": settings_json,
            })
            .to_string(),
        );
        return ExitCode::SUCCESS;
    }
    print_line(&file_line(settings));
    for r in &rows {
        print_line(&row(r));
    }
    ExitCode::SUCCESS
}

fn file_line(settings: &Settings) -> String {
    match (&settings.path, settings.found) {
        (Some(p), true) => format!("config file: {}", printable(&p.display().to_string())),
        (Some(p), false) => format!(
            "config file: {} (not present; built-in defaults apply)",
            printable(&p.display().to_string())
        ),
        (None, _) => "config file: none (no config directory on this platform)".to_string(),
    }
}

fn row(r: &Effective) -> String {
    let value = r.value.as_deref().unwrap_or("(none)");
    format!(
        "{:<22} {:<36} {}",
        r.key,
        printable(value),
        printable(&r.source)
    )
}
