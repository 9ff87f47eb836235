//! `torrentguard hash`: the id a share would have, computed offline, without a tracker.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use torrentguard_agent::EventSink;
use torrentguard_agent::scan::{ScanOptions, ScanWarning, hashing_progress, scan_with_events};
use torrentguard_protocol::Manifest;
use torrentguard_protocol::hashing::manifest_from_reader;

use super::args::HashArgs;
use super::output::{Output, renderer};
use super::render::{Mode, human, printable};

pub(crate) async fn hash(args: HashArgs, mode: Mode) -> anyhow::Result<ExitCode> {
    let (events, out) = renderer(mode);
    for unit in units(&args.paths, args.name.is_some()) {
        let started = Instant::now();
        let (a, e) = (args.clone(), events.clone());
        let (manifest, warnings) =
            tokio::task::spawn_blocking(move || hash_blocking(&a, &unit, &e))
                .await
                .context("the hashing task failed")??;
        let secs = started.elapsed().as_secs_f64();
        report_warnings(&out, mode, &warnings);
        report(&out, &manifest, secs);
    }
    Ok(ExitCode::SUCCESS)
}

/// What `hash` and `share` make of their paths: each PATH one share (a file, or a folder's
/// tree), or with `--name` (`joined`) all of them one tree.
pub(crate) fn units(paths: &[PathBuf], joined: bool) -> Vec<Vec<PathBuf>> {
    if joined {
        return vec![paths.to_vec()];
    }
    paths.iter().map(|p| vec![p.clone()]).collect()
}

/// One regular file (without `--name`) keeps its single-file manifest, so its id is the one
/// `share FILE` announces; a directory, or several paths with `--name`, make one tree.
fn hash_blocking(
    args: &HashArgs,
    paths: &[PathBuf],
    events: &EventSink,
) -> anyhow::Result<(Manifest, Vec<ScanWarning>)> {
    if let [file] = paths
        && args.name.is_none()
        && std::fs::metadata(file).is_ok_and(|m| m.is_file())
    {
        return Ok((hash_file(file, args, events)?, Vec::new()));
    }
    let opts = ScanOptions {
        chunk_size: args.hashing.chunk_size,
        hash: args.hashing.hash,
        follow_symlinks: args.follow_symlinks,
        name: args.name.clone(),
        workers: None,
    };
    let scanned = scan_with_events(paths, &opts, events)?;
    Ok((scanned.manifest, scanned.warnings))
}

fn hash_file(path: &Path, args: &HashArgs, events: &EventSink) -> anyhow::Result<Manifest> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: has no usable file name", path.display()))?;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let total = file.metadata()?.len();
    let progress = hashing_progress(name.to_string(), events);
    manifest_from_reader(
        name,
        file,
        args.hashing.chunk_size,
        args.hashing.hash,
        |done| progress(done, total),
    )
    .with_context(|| format!("hashing {}", path.display()))
}

/// What was left out: `warning` events in JSON mode, else one line each on stderr (even with
/// `-q`: a skipped file changes what the id stands for).
pub(crate) fn report_warnings(out: &Output, mode: Mode, warnings: &[ScanWarning]) {
    let r = out.lock().unwrap_or_else(|e| e.into_inner());
    for w in warnings {
        let message = printable(&w.to_string()).into_owned();
        if mode == Mode::Json {
            r.json(&serde_json::json!({"event": "warning", "message": message}));
        } else {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "warning: {message}");
        }
    }
}

/// `ID  NAME` (the id alone with `-q`), then what it covers and how long it took.
fn report(out: &Output, m: &Manifest, secs: f64) {
    let id = m.file_id().to_string();
    let files = m.file_count();
    let dirs = m.entries().iter().filter(|e| e.is_dir()).count();
    let r = out.lock().unwrap_or_else(|e| e.into_inner());
    r.json(&serde_json::json!({
        "event": "hashed",
        "file_id": id,
        "name": m.name,
        "kind": if m.is_tree() { "tree" } else { "file" },
        "files": files,
        "dirs": dirs,
        "size": m.size,
        "chunks": m.chunk_count(),
        "chunk_size": m.chunk_size,
        "hash": m.hash,
        "secs": secs,
    }));
    r.quiet_result(&id);
    r.say(&format!("{id}  {}", printable(&m.name)));
    let what = match m.is_tree() {
        true => format!("{}, {}", count(files, "file"), count(dirs, "directory")),
        false => count(1, "file"),
    };
    let rate = (m.size as f64 / secs.max(1e-9)) as u64;
    r.say(&format!(
        "{what}, {} ({} bytes), {} chunks of {}; hashed in {secs:.2} s ({}/s)",
        human(m.size),
        m.size,
        m.chunk_count(),
        human(m.chunk_size as u64),
        human(rate)
    ));
}

/// `1 file`, `2 files`, `1 directory`, `0 directories`.
fn count(n: usize, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {noun}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_path_is_one_share_unless_joined_by_name() {
        let paths = [PathBuf::from("a.bin"), PathBuf::from("dir")];
        assert_eq!(
            units(&paths, false),
            [vec![PathBuf::from("a.bin")], vec![PathBuf::from("dir")]]
        );
        assert_eq!(units(&paths, true), [paths.to_vec()]);
    }
}
