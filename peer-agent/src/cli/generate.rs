//! `torrentguard completions SHELL` and `torrentguard man [DIR]`, generated from the clap
//! definitions so they never drift from the flags.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use super::args::Cli;
use super::render::print_line;

/// The command as shipped: built without any config file, so no user's values leak into a
/// completion script or a man page.
fn command() -> clap::Command {
    Cli::command()
}

pub(crate) fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "torrentguard", &mut script);
    print_text(&script);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn man(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cmd = command();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut page)
            .context("rendering the man page")?;
        print_text(&page);
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write the man pages to {}", dir.display()))?;
    print_line(&format!(
        "wrote the man pages to {} (try: man torrentguard)",
        dir.display()
    ));
    Ok(ExitCode::SUCCESS)
}

/// Generated text through the one stdout path (a closed pipe ends the process quietly).
fn print_text(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    print_line(text.strip_suffix('\n').unwrap_or(&text));
}
