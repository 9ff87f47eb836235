//! `torrentguard status`: the tracker's files and peers, and local partial downloads.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use torrentguard_agent::torrent::store::list_partials;
use torrentguard_protocol::FileId;
use torrentguard_protocol::api::{
    FileSummary, NatMapping, PeerInfo, PeerSummary, Reach, Reputation,
};

use super::args::StatusArgs;
use super::codes::trackers_for;
use super::first_tracker_client;
use super::render::{Mode, cell, human, print_line, printable};

pub(crate) async fn status(args: StatusArgs, dir: &Path, mode: Mode) -> anyhow::Result<ExitCode> {
    // A running daemon's transfers; the tracker's view with a FILE_ID or --no-daemon.
    #[cfg(feature = "daemon")]
    if !args.client.no_daemon
        && args.file_id.is_none()
        && let Some(client) = super::client::DaemonClient::find(dir).await
    {
        return super::client::status(&client, mode).await;
    }
    let mut partials = list_partials(&args.output);
    let file_id = args.file_id.as_ref().map(|f| f.file_id());
    if let Some(fid) = file_id {
        partials.retain(|p| p.file_id == fid);
    }
    let trackers = trackers_for(args.file_id.as_slice(), &args.tracker)?;
    if trackers.is_empty() {
        // Local partial downloads need no tracker: show them alone and say what is skipped.
        if mode == Mode::Json {
            print_line(
                &serde_json::json!({"event": "status", "tracker": null, "file_id": file_id, "partials": partials})
                    .to_string(),
            );
        } else {
            print_line(
                "tracker: skipped (no --tracker given, nor TORRENTGUARD_TRACKER, nor `tracker` in the config file); local part only",
            );
            print_partials(&args.output, &partials);
        }
        return Ok(ExitCode::SUCCESS);
    };
    let client = first_tracker_client(&trackers, dir).await?;
    match file_id {
        Some(fid) => status_of_file(&client, fid, &partials, mode).await?,
        None => status_of_tracker(&client, &args.output, &partials, mode).await?,
    }
    Ok(ExitCode::SUCCESS)
}

type Client = torrentguard_agent::session::TrackerClient;
type Partial = torrentguard_agent::torrent::store::PartialDownload;

fn ago(t: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format!("{}s ago", (now - t).max(0))
}

async fn status_of_file(
    client: &Client,
    fid: FileId,
    partials: &[Partial],
    mode: Mode,
) -> anyhow::Result<()> {
    let m = client.manifest(&fid).await?;
    let peers = client.file_peers(&fid).await?.peers;
    if mode == Mode::Json {
        print_line(&serde_json::json!({"event": "file_status", "file_id": fid, "name": m.name, "size": m.size, "chunk_size": m.chunk_size, "chunks": m.chunk_count(), "hash": m.hash, "peers": peers, "partials": partials}).to_string());
        return Ok(());
    }
    print_line(&format!(
        "file {fid}\n  name   {}\n  size   {} ({} bytes)\n  chunks {} × {} ({})",
        printable(&m.name),
        human(m.size),
        m.size,
        m.chunk_count(),
        human(m.chunk_size as u64),
        m.hash
    ));
    print_file_peers(&peers, m.chunk_count());
    for p in partials {
        print_line(&format!(
            "\nlocal partial download: {} ({}/{} chunks verified)",
            printable(&p.part.display().to_string()),
            p.chunks_verified,
            p.chunk_count
        ));
    }
    Ok(())
}

async fn status_of_tracker(
    client: &Client,
    output: &Path,
    partials: &[Partial],
    mode: Mode,
) -> anyhow::Result<()> {
    let files = client.all_files().await?;
    let peers = client.peers().await?;
    if mode == Mode::Json {
        print_line(&serde_json::json!({"event": "status", "tracker": client.base_url().as_str(), "fingerprint": client.fingerprint().to_string(), "files": files, "peers": peers, "partials": partials}).to_string());
        return Ok(());
    }
    print_line(&format!(
        "tracker {} ({})\n",
        client.base_url(),
        client.fingerprint()
    ));
    print_files(&files);
    print_peers(&peers);
    if !partials.is_empty() {
        print_line("");
        print_partials(output, partials);
    }
    Ok(())
}

/// The peers of one file and how much of it each has.
fn print_file_peers(peers: &[PeerInfo], chunk_count: u32) {
    print_line(&format!(
        "\n{:<20} {:<40} {:>12} {:>10} {:>9} {:<6}",
        "PEER", "ADDRESS", "HAVE", "LAST SEEN", "SCORE", "REACH"
    ));
    for p in peers {
        let have = if p.complete {
            "complete".to_string()
        } else {
            format!("{}/{}", p.have, chunk_count)
        };
        print_line(&format!(
            "{:<20} {:<40} {:>12} {:>10} {:>9} {:<6}",
            p.fingerprint.short(),
            SocketAddr::new(p.address, p.port).to_string(),
            have,
            ago(p.last_seen),
            score(p.reputation),
            reach(p.reach)
        ));
    }
    if peers.is_empty() {
        print_line("(no live peers)");
    }
}

/// The files the tracker lists, one row each.
fn print_files(files: &[FileSummary]) {
    print_line(&format!(
        "{:<64}  {} {:>7} {:>11} {:>7} {:>7} {:>8}",
        "FILE ID",
        cell("NAME", NAME_COLUMNS),
        "FILES",
        "SIZE",
        "CHUNKS",
        "SEEDERS",
        "LEECHERS"
    ));
    for f in files {
        print_line(&format!(
            "{:<64}  {} {:>7} {:>11} {:>7} {:>7} {:>8}",
            f.file_id.to_string(),
            cell(&f.name, NAME_COLUMNS),
            f.file_count,
            human(f.size),
            f.chunk_count,
            f.seeders,
            f.leechers
        ));
    }
    if files.is_empty() {
        print_line("(no files registered)");
    }
}

/// The live peers the tracker lists, one row each.
fn print_peers(peers: &[PeerSummary]) {
    print_line(&format!(
        "\n{:<20} {:<40} {:>6} {:>10} {:>9} {:<6}",
        "PEER", "ADDRESS", "FILES", "LAST SEEN", "SCORE", "REACH"
    ));
    for p in peers {
        print_line(&format!(
            "{:<20} {:<40} {:>6} {:>10} {:>9} {:<6}",
            p.fingerprint.short(),
            SocketAddr::new(p.address, p.port).to_string(),
            p.files.len(),
            ago(p.last_seen),
            score(p.reputation),
            reach(p.reach)
        ));
    }
    if peers.is_empty() {
        print_line("(no live peers)");
    }
}

/// The tracker's reputation score of a peer, with the reporters behind it when there are
/// any (`-` from a tracker that keeps no reputation).
fn score(r: Option<Reputation>) -> String {
    match r {
        None => "-".into(),
        Some(Reputation {
            score,
            reporters: 0,
        }) => score.to_string(),
        Some(Reputation { score, reporters }) => format!("{score} ({reporters})"),
    }
}

/// How a peer said it can be reached, as the path a downloader would take to it: `open`
/// (dialled directly), `punch` (its NAT keeps ports: hole punching), `relay` (its NAT
/// renumbers ports), `closed` (not reachable inbound, mapping not measured), `-` (it did not
/// say: an older agent, or not learned yet).
fn reach(r: Option<Reach>) -> &'static str {
    match r {
        None => "-",
        Some(Reach { inbound: true, .. })
        | Some(Reach {
            mapping: NatMapping::Open,
            ..
        }) => "open",
        Some(Reach { mapping, .. }) => match mapping {
            NatMapping::PortPreserving => "punch",
            NatMapping::Unpredictable => "relay",
            NatMapping::Open | NatMapping::Unknown => "closed",
        },
    }
}

/// Width of the NAME column of `status`, in terminal columns.
const NAME_COLUMNS: usize = 24;

fn print_partials(output: &Path, partials: &[Partial]) {
    if partials.is_empty() {
        print_line(&format!(
            "no partial downloads in {}",
            printable(&output.display().to_string())
        ));
        return;
    }
    print_line(&format!(
        "local partial downloads in {}:",
        printable(&output.display().to_string())
    ));
    for p in partials {
        print_line(&format!(
            "  {} {}/{} chunks verified ({})",
            printable(&p.part.display().to_string()),
            p.chunks_verified,
            p.chunk_count,
            p.file_id
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reach_column_names_the_path_to_the_peer() {
        let r = |inbound, mapping| Some(Reach { inbound, mapping });
        assert_eq!(reach(None), "-");
        assert_eq!(reach(r(true, NatMapping::Open)), "open");
        assert_eq!(reach(r(true, NatMapping::Unknown)), "open");
        assert_eq!(reach(r(false, NatMapping::PortPreserving)), "punch");
        assert_eq!(reach(r(false, NatMapping::Unpredictable)), "relay");
        assert_eq!(reach(r(false, NatMapping::Unknown)), "closed");
    }

    #[test]
    fn scores_show_their_reporters() {
        assert_eq!(score(None), "-");
        assert_eq!(
            score(Some(Reputation {
                score: 100,
                reporters: 0
            })),
            "100"
        );
        assert_eq!(
            score(Some(Reputation {
                score: 25,
                reporters: 3
            })),
            "25 (3)"
        );
    }
}
