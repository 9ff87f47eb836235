//! `torrentguard get`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use tokio_util::sync::CancellationToken;
use torrentguard_agent::agent::Agent;
use torrentguard_agent::{DownloadError, DownloadOptions, DownloadReport, Event, EventSink};
use torrentguard_protocol::{FileId, Manifest};

use super::args::GetArgs;
use super::codes::FileRef;
use super::exit::{INTERRUPTED, UsageError, report_error};
use super::interrupt::{forward, unless_stopped, watch_interrupts};
use super::output::{Output, renderer, report_stopped};
use super::render::Mode;
use super::{identity, require_trackers, resolve_advertise};

pub(crate) async fn get(args: GetArgs, dir: &Path, mode: Mode) -> anyhow::Result<ExitCode> {
    #[cfg(feature = "daemon")]
    if !args.client.no_daemon
        && let Some(client) = super::client::DaemonClient::find(dir).await
    {
        return super::client::get(&client, &args, mode).await;
    }
    let trackers = require_trackers(&args.ids, &args.tracker)?;
    prepare_output(&args.output)?;
    let advertise = resolve_advertise(&args.endpoint.advertise).await?;
    let stop = CancellationToken::new();
    watch_interrupts(stop.clone())?;
    let id = identity(dir)?;
    let (events, out) = renderer(mode);
    let (listen, limits) = (args.endpoint.listen, args.peer_limits.limits());
    // The first tracker that answers is used, the others on failure (see `TrackerSet`).
    let started = Agent::start_with_trackers(id, dir.to_path_buf(), trackers, listen, limits);
    let Some(agent) = unless_stopped(&stop, started).await else {
        return Ok(ExitCode::from(INTERRUPTED));
    };
    let agent = agent?;
    agent.seeder.set_upload_limit(args.upload_limit);
    agent.download_limit.set_limit(args.download_limit);
    agent.seeder.set_compression(args.wire.compression.into());
    if let Some(a) = advertise {
        agent.seeder.set_advertise(a);
    }
    // Logged (not printed): `get`'s output is its progress.
    super::map_port(&agent, args.endpoint.port_map).await;
    // After --advertise: the probe dials the port we announce.
    agent.learn_reach(&events);
    forward(&stop, agent.cancel.clone());

    let given: Vec<FileId> = args.ids.iter().map(FileRef::file_id).collect();
    let ids = unique_ids(&given, mode);
    let manifests =
        match torrentguard_agent::session::fetch_manifests_from(&agent.trackers, &ids).await {
            Ok(m) => m,
            Err(e) => {
                agent.shutdown().await;
                return Err(match e {
                    DownloadError::NameClash { .. } => anyhow!(UsageError(e.to_string())),
                    e => e.into(),
                });
            }
        };
    let (reports, first_err) = download_all(&agent, &args, &ids, manifests, &events, mode).await;
    if first_err.is_none() && args.seed && !stop.is_cancelled() {
        seed_until_stopped(&agent, &reports, &events, &out, &stop).await;
    }
    // Every end (done, failed, interrupted) leaves the swarm: `stopped` for each file announced.
    agent.shutdown().await;
    if args.seed && first_err.is_none() {
        let served: Vec<_> = reports.iter().map(|r| r.shared.clone()).collect();
        report_stopped(&out, &served);
    }
    match first_err {
        Some(e) => Err(e),
        None if stop.is_cancelled() => Ok(ExitCode::from(INTERRUPTED)),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `-o` must be a directory we can write to; it is created if missing.
fn prepare_output(output: &Path) -> anyhow::Result<()> {
    if output.exists() && !output.is_dir() {
        bail!(UsageError(format!(
            "-o {}: is a file, not a directory; name a directory to download into (it is created if missing)",
            output.display()
        )));
    }
    std::fs::create_dir_all(output)
        .with_context(|| format!("cannot create the output directory {}", output.display()))?;
    check_writable(output)
}

/// The same id twice is one download; two ids that would write the same file name are
/// refused before anything is fetched (they would share one `.part`).
fn unique_ids(given: &[FileId], mode: Mode) -> Vec<FileId> {
    let mut ids = given.to_vec();
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    if ids.len() < given.len() && mode != Mode::Quiet {
        eprintln!("note: a file id was given more than once; each is downloaded once");
    }
    ids
}

/// Runs every download at once. The first failure is returned; later ones are reported as
/// they are collected, so none goes unsaid.
async fn download_all(
    agent: &Agent,
    args: &GetArgs,
    ids: &[FileId],
    manifests: Vec<Option<Arc<Manifest>>>,
    events: &EventSink,
    mode: Mode,
) -> (Vec<DownloadReport>, Option<anyhow::Error>) {
    let downloads = ids.iter().zip(manifests).map(|(fid, manifest)| {
        let mut opts = DownloadOptions::new(args.output.clone());
        opts.force = args.force;
        opts.max_peers = args.max_peers;
        opts.timeout = args.timeout;
        opts.only = args.only.clone();
        opts.reuse = args.reuse.clone();
        opts.verify_full = args.verify_full;
        opts.compression = args.wire.compression.into();
        opts.manifest = manifest;
        opts.events = events.clone();
        agent.download(*fid, opts)
    });
    let results = futures::future::join_all(downloads).await;
    let mut first_err = None;
    let mut reports = Vec::new();
    for (fid, r) in ids.iter().zip(results) {
        match r {
            Ok(rep) => reports.push(rep),
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!("download of {fid} failed"));
                if first_err.is_none() {
                    first_err = Some(e);
                } else {
                    report_error(mode, &e);
                }
            }
        }
    }
    (reports, first_err)
}

/// `--seed`: announce every downloaded file and serve it until Ctrl-C.
async fn seed_until_stopped(
    agent: &Agent,
    reports: &[DownloadReport],
    events: &EventSink,
    out: &Output,
    stop: &CancellationToken,
) {
    for r in reports {
        agent.keep_announcing(r.shared.clone(), events.clone());
        events.emit(Event::Seeding {
            file_id: r.file_id,
            name: r.shared.manifest.name.clone(),
            size: r.bytes,
            listen: agent.listen_addr(),
        });
    }
    out.lock()
        .unwrap_or_else(|e| e.into_inner())
        .say("seeding; press Ctrl-C to stop");
    stop.cancelled().await;
}

fn check_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = tempfile::Builder::new()
        .prefix(".torrentguard-write-test")
        .tempfile_in(dir);
    probe
        .map(|_| ())
        .with_context(|| format!("the output directory {} is not writable", dir.display()))
}
