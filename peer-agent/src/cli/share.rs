//! `torrentguard share`, with `--self-download`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use torrentguard_agent::PinnedUrl;
use torrentguard_agent::agent::{Agent, TrackerTarget};
use torrentguard_agent::{DownloadError, DownloadOptions, Event, EventSink};
use torrentguard_trust::Identity;

use torrentguard_agent::scan::{ScanOptions, scan_with_events};
use torrentguard_agent::share_code::ShareCode;
use torrentguard_agent::torrent::SharedFile;

use super::args::ShareArgs;
use super::embedded::EmbeddedTracker;
use super::exit::{INTERRUPTED, is_interrupted};
use super::hash::{report_warnings, units};
use super::interrupt::{forward, unless_stopped, watch_interrupts};
use super::output::{Output, renderer, report_stopped};
use super::render::Mode;
use super::{identity, resolve_advertise, targets};

/// The renderer of `share`: with `-q`, only file ids and self-download verdicts.
fn share_renderer(mode: Mode) -> (EventSink, Output) {
    let (sink, out) = renderer(mode);
    out.lock()
        .unwrap_or_else(|e| e.into_inner())
        .completed_paths_are_not_results();
    (sink, out)
}

pub(crate) async fn share(args: ShareArgs, dir: &Path, mode: Mode) -> anyhow::Result<ExitCode> {
    check_readable(&args.files)?;
    #[cfg(feature = "daemon")]
    if !args.client.no_daemon
        && !args.self_download
        && let Some(client) = super::client::DaemonClient::find(dir).await
    {
        return super::client::share(&client, &args, mode).await;
    }
    let advertise = resolve_advertise(&args.endpoint.advertise).await?;
    let stop = CancellationToken::new();
    watch_interrupts(stop.clone())?;
    let id = identity(dir)?;
    let (events, out) = share_renderer(mode);
    let (embedded, trackers) = pick_trackers(&args, dir, &out).await?;
    let (public_url, reach_note) = match &embedded {
        Some(t) => {
            let (url, note) = t.public_url(advertise.as_ref());
            (Some(url), note)
        }
        None => (None, None),
    };
    if let Some(note) = &reach_note {
        say(&out, note);
    }
    let started = Agent::start_with_trackers(
        id.clone(),
        dir.to_path_buf(),
        trackers,
        args.endpoint.listen,
        args.peer_limits.limits(),
    );
    let agent = match unless_stopped(&stop, started).await {
        Some(a) => a?,
        None => {
            stop_embedded(embedded).await;
            return Ok(ExitCode::from(INTERRUPTED));
        }
    };
    agent.seeder.set_upload_limit(args.upload_limit);
    agent.seeder.set_compression(args.wire.compression.into());
    if let Some(a) = advertise.clone() {
        agent.seeder.set_advertise(a);
    }
    if let Some(line) = super::map_port(&agent, args.endpoint.port_map).await {
        say(&out, &line);
    }
    // After --advertise: the probe dials the port we announce.
    agent.learn_reach(&events);
    let public = public_trackers(&agent, public_url);
    let served = serve_and_report(&agent, &args, &public, &events, &out, &stop).await;
    leave(&agent, embedded, served, &out, &stop).await
}

/// Refuses what cannot be shared before anything starts.
fn check_readable(files: &[PathBuf]) -> anyhow::Result<()> {
    for f in files {
        let meta = std::fs::metadata(f).with_context(|| format!("cannot read {}", f.display()))?;
        if meta.is_dir() {
            std::fs::read_dir(f).with_context(|| format!("cannot read {}", f.display()))?;
            continue;
        }
        if !meta.is_file() {
            bail!("{} is neither a regular file nor a folder", f.display());
        }
        std::fs::File::open(f).with_context(|| format!("cannot read {}", f.display()))?;
    }
    Ok(())
}

/// Shares one unit: a regular file alone (its single-file id), else a scanned tree.
async fn share_unit(
    agent: &Agent,
    args: &ShareArgs,
    paths: &[PathBuf],
    events: &EventSink,
    out: &Output,
) -> anyhow::Result<Arc<SharedFile>> {
    if let [file] = paths
        && args.name.is_none()
        && std::fs::metadata(file).is_ok_and(|m| m.is_file())
    {
        return Ok(agent
            .share(file, args.hashing.chunk_size, args.hashing.hash, events)
            .await?);
    }
    let opts = ScanOptions {
        chunk_size: args.hashing.chunk_size,
        hash: args.hashing.hash,
        follow_symlinks: args.follow_symlinks,
        name: args.name.clone(),
        workers: None,
    };
    let (paths, progress_events) = (paths.to_vec(), events.clone());
    let scanned =
        tokio::task::spawn_blocking(move || scan_with_events(&paths, &opts, &progress_events))
            .await
            .context("the hashing task failed")??;
    let mode = out.lock().unwrap_or_else(|e| e.into_inner()).mode();
    report_warnings(out, mode, &scanned.warnings);
    Ok(agent.share_tree(scanned, events).await?)
}

/// The trackers of `--tracker`, or without it one run in this process (announced on `out`).
async fn pick_trackers(
    args: &ShareArgs,
    dir: &Path,
    out: &Output,
) -> anyhow::Result<(Option<EmbeddedTracker>, Vec<TrackerTarget>)> {
    let given = targets(&args.tracker);
    if !given.is_empty() {
        return Ok((None, given));
    }
    let t = EmbeddedTracker::for_share(args, dir).await?;
    let url = t.url();
    say(
        out,
        &format!("embedded tracker on {url}, fingerprint {}", t.fingerprint()),
    );
    out.lock().unwrap_or_else(|e| e.into_inner()).json(
        &serde_json::json!({"event": "tracker", "url": url, "fingerprint": t.fingerprint().to_string()}),
    );
    let target = TrackerTarget {
        url,
        fingerprint: Some(t.fingerprint()),
        token: None,
    };
    Ok((Some(t), vec![target]))
}

/// The trackers as other hosts reach them, each with its pin, for share codes: the embedded
/// tracker under its public URL, else every tracker given.
fn public_trackers(agent: &Agent, embedded_public_url: Option<String>) -> Vec<PinnedUrl> {
    let mut pinned: Vec<PinnedUrl> = agent
        .trackers
        .pinned_targets()
        .into_iter()
        .map(|t| PinnedUrl {
            url: t.url,
            fingerprint: t.fingerprint,
        })
        .collect();
    if let (Some(url), Some(first)) = (embedded_public_url, pinned.first_mut()) {
        first.url = url;
    }
    pinned
}

/// Seeds until Ctrl-C if asked, then leaves the swarm and stops the embedded tracker. A
/// finished self-download (without `--seed`) or a failure leaves at once.
async fn leave(
    agent: &Agent,
    embedded: Option<EmbeddedTracker>,
    served: anyhow::Result<Served>,
    out: &Output,
    stop: &CancellationToken,
) -> anyhow::Result<ExitCode> {
    if !stop.is_cancelled() && !matches!(served, Ok(Served::KeepSeeding)) {
        // Done (self-download without --seed) or failed: leave without waiting for Ctrl-C.
        agent.shutdown().await;
        stop_embedded(embedded).await;
        return served.map(Served::exit_code);
    }
    if matches!(served, Ok(Served::KeepSeeding)) {
        say(out, "seeding; press Ctrl-C to stop");
        stop.cancelled().await;
    }
    say(out, "stopping: telling peers and the tracker that we leave");
    agent.shutdown().await;
    report_stopped(out, &agent.seeder.files());
    stop_embedded(embedded).await;
    match served {
        Err(e) if !is_interrupted(&e) => Err(e),
        _ => Ok(ExitCode::from(INTERRUPTED)),
    }
}

async fn stop_embedded(t: Option<EmbeddedTracker>) {
    if let Some(t) = t {
        t.stop().await;
    }
}

fn say(out: &Output, line: &str) {
    out.lock().unwrap_or_else(|e| e.into_inner()).say(line);
}

/// How sharing went before the wait for Ctrl-C.
enum Served {
    /// Seed until interrupted.
    KeepSeeding,
    /// `--self-download` without `--seed`: exit now, with this code.
    Done(ExitCode),
}

impl Served {
    fn exit_code(self) -> ExitCode {
        match self {
            Served::KeepSeeding => ExitCode::SUCCESS,
            Served::Done(code) => code,
        }
    }
}

/// Hashes, registers and serves every file, printing the `get` command for each, then runs the
/// self-download if asked. Returns early (`KeepSeeding`) if `stop` fires.
async fn serve_and_report(
    agent: &Agent,
    args: &ShareArgs,
    public_trackers: &[PinnedUrl],
    events: &EventSink,
    out: &Output,
    stop: &CancellationToken,
) -> anyhow::Result<Served> {
    let mut shared = Vec::new();
    for unit in units(&args.files, args.name.is_some()) {
        let hashed = share_unit(agent, args, &unit, events, out);
        let Some(s) = unless_stopped(stop, hashed).await else {
            return Ok(Served::KeepSeeding);
        };
        let s = s?;
        let code = ShareCode {
            file_id: s.file_id,
            trackers: public_trackers.to_vec(),
            swarm_token: agent.trackers.targets().find_map(|t| t.token.clone()),
        };
        report_code(&code, args.qr, out)?;
        shared.push(s);
    }
    if !args.self_download {
        return Ok(Served::KeepSeeding);
    }
    let code = self_download(agent, args, &shared, events, stop).await?;
    Ok(if args.seed {
        Served::KeepSeeding
    } else {
        Served::Done(code)
    })
}

/// Prints how to get a share: its code (and QR code with `--qr`), the `get` command with it,
/// and the same spelled out in flags; in JSON a `share_code` event; with `-q` the id alone.
fn report_code(code: &ShareCode, qr: bool, out: &Output) -> anyhow::Result<()> {
    let out = out.lock().unwrap_or_else(|e| e.into_inner());
    out.quiet_result(&code.file_id.to_string());
    // A tracker URL too long for a code (it cannot be: it is an address and a port) would
    // print a code that `get` refuses; say so rather than print it.
    if let Err(e) = code.check() {
        out.say(&format!("no share code for {}: {e}", code.file_id));
        return Ok(());
    }
    out.json(&serde_json::json!({
        "event": "share_code",
        "file_id": code.file_id,
        "code": code.to_string(),
    }));
    out.say(&format!("share code: {code}"));
    if qr && out.mode() != Mode::Json && out.mode() != Mode::Quiet {
        out.say(&qr_text(code)?);
    }
    out.say(&format!(
        "get it elsewhere with:\n  torrentguard get {code}\nor, spelled out:\n  torrentguard get {}{}",
        code.file_id,
        code.trackers
            .iter()
            .map(|t| format!(" --tracker {t}"))
            .collect::<String>()
    ));
    Ok(())
}

/// The code as a terminal QR code: two modules per character cell, light on dark as a
/// terminal shows it, with its quiet zone. Upper case, because QR's alphanumeric mode (upper
/// case, digits and `:`) packs it smaller and codes are read in any case.
fn qr_text(code: &ShareCode) -> anyhow::Result<String> {
    use qrcode::render::unicode::Dense1x2;
    let qr = qrcode::QrCode::new(code.to_string().to_uppercase().as_bytes())
        .context("the share code does not fit in a QR code")?;
    Ok(qr
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

async fn self_download(
    agent: &Agent,
    args: &ShareArgs,
    shared: &[Arc<SharedFile>],
    events: &EventSink,
    stop: &CancellationToken,
) -> anyhow::Result<ExitCode> {
    let downloader = start_downloader(agent, stop).await?;
    let tmp;
    let out_dir = match &args.output {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("torrentguard-self-download")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    forward(stop, downloader.cancel.clone());
    let mut all_ok = true;
    for s in shared {
        let mut opts = DownloadOptions::new(out_dir.clone());
        opts.compression = args.wire.compression.into();
        opts.events = events.clone();
        let started = Instant::now();
        let report = match downloader.download(s.file_id, opts).await {
            Ok(r) => r,
            Err(e) => {
                // Its `stopped` announces are owed whatever the error.
                downloader.shutdown().await;
                return Err(e.into());
            }
        };
        let secs = started.elapsed().as_secs_f64();
        let identical = same_content(s, &report.shared, &report.path)?;
        all_ok &= identical;
        events.emit(Event::SelfDownload {
            file_id: s.file_id,
            ok: identical,
            bytes: report.bytes,
            secs,
            path: report.path.clone(),
            seeder: agent.listen_addr(),
        });
    }
    downloader.shutdown().await;
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A second agent with a throw-away identity: to the tracker and the seeder it is just another
/// peer, so the whole path (announce, swarm check, pinned mutual TLS, verification) is exercised.
async fn start_downloader(agent: &Agent, stop: &CancellationToken) -> anyhow::Result<Agent> {
    let other = Arc::new(Identity::generate("torrentguard-self-download")?);
    let loopback: SocketAddr = if agent.listen_addr().is_ipv6() {
        "[::1]:0".parse()?
    } else {
        "127.0.0.1:0".parse()?
    };
    let Some(downloader) = unless_stopped(
        stop,
        Agent::start_with_trackers(
            other,
            agent.data_dir.clone(),
            agent.trackers.pinned_targets(),
            loopback,
            Default::default(),
        ),
    )
    .await
    else {
        return Err(DownloadError::Interrupted.into());
    };
    Ok(downloader?)
}

/// Whether the copy holds the original's bytes: every chunk read back from both sides and
/// compared, and for a tree every entry present with its kind.
fn same_content(
    original: &SharedFile,
    copy: &SharedFile,
    copy_path: &Path,
) -> anyhow::Result<bool> {
    let m = &original.manifest;
    for e in m.entries() {
        let at = e
            .path
            .split('/')
            .fold(copy_path.to_path_buf(), |p, c| p.join(c));
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() == e.is_dir() => {}
            _ => return Ok(false),
        }
    }
    let (a, b) = (original.storage(), copy.storage());
    let mut ba = vec![0u8; m.chunk_size as usize];
    let mut bb = vec![0u8; m.chunk_size as usize];
    for i in 0..m.chunk_count() {
        let len = m.chunk_len(i) as usize;
        a.read_chunk(i, &mut ba[..len])?;
        b.read_chunk(i, &mut bb[..len])?;
        if ba[..len] != bb[..len] {
            return Ok(false);
        }
    }
    Ok(true)
}
