//! `nat-matrix`: the NAT reachability matrix (issue 15). For every ordered pair (seeder place,
//! downloader place) over {public, Forwarded, PortRestricted, Symmetric} it builds a fresh NAT
//! lab (`torrentguard-netlab`), runs the tracker with its relay in the internet namespace, a
//! seeder in one place and a downloader in the other, and records how the peers met (the
//! `peer_connected` path and tries), the time to the first verified chunk, the total time, the
//! throughput, the bytes the relay moved (tracker metric delta) and whether the copy is
//! byte-identical. Then the issue's headline runs at `--headline-mib`: Symmetric <-> Symmetric
//! through the relay, PortRestricted <-> PortRestricted punched, and public <-> public direct
//! (relay against direct, same size). A pair that fails is a row saying why.
//!
//! ```text
//! nat-matrix --bin-dir target/release --md OUT.md --jsonl OUT.jsonl [--size-mib 64]
//!            [--headline-mib 100] [--only public:symmetric,...] [--no-headline] [--latency-ms N]
//! ```
//!
//! Run as root (namespaces, iptables); `bench/nat/run` builds and runs it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use tempfile::TempDir;
use torrentguard_netlab::swarm::{
    Agents, GET_PORT, LabTracker, Proc, SEED_PORT, connections, same_bytes,
};
use torrentguard_netlab::{Host, Lab, LabError, NatKind};

#[derive(Parser)]
#[command(about = "Which NAT pairs connect how, how fast; through the relay against direct")]
struct Cli {
    /// Directory holding `torrentguard` and `torrentguard-tracker`.
    #[arg(long)]
    bin_dir: PathBuf,
    /// File size of the matrix runs, MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// File size of the headline runs, MiB.
    #[arg(long, default_value_t = 100)]
    headline_mib: u64,
    /// Only these pairs (`seeder:downloader`, names as in the table, lower case), comma list.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the headline runs.
    #[arg(long)]
    no_headline: bool,
    /// Delay added on the lab's internet (tc netem); refused where the kernel has no sch_netem.
    #[arg(long)]
    latency_ms: Option<u32>,
    /// Bound on one download, seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Where test files, agent data and downloads go (default: /dev/shm, else the temp dir).
    #[arg(long)]
    work: Option<PathBuf>,
    /// The markdown report.
    #[arg(long)]
    md: PathBuf,
    /// The raw results, one JSON object per run.
    #[arg(long)]
    jsonl: PathBuf,
    /// The commit measured, for the report's header.
    #[arg(long, default_value = "unknown")]
    commit: String,
}

/// Where an agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Public,
    Forwarded,
    PortRestricted,
    Symmetric,
}

const PLACES: [Place; 4] = [
    Place::Public,
    Place::Forwarded,
    Place::PortRestricted,
    Place::Symmetric,
];

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Public => "public",
            Place::Forwarded => "Forwarded",
            Place::PortRestricted => "PortRestricted",
            Place::Symmetric => "Symmetric",
        }
    }

    /// The router this place sits behind; None on a public host.
    fn nat(self) -> Option<NatKind> {
        match self {
            Place::Public => None,
            // Both agents' peer ports forwarded: whichever role this home has is reachable.
            Place::Forwarded => Some(NatKind::Forwarded(vec![SEED_PORT, GET_PORT])),
            Place::PortRestricted => Some(NatKind::PortRestricted),
            Place::Symmetric => Some(NatKind::Symmetric),
        }
    }
}

/// One download and what it measured (or why it failed).
struct Run {
    label: &'static str,
    seeder: Place,
    downloader: Place,
    size: u64,
    outcome: Result<Measured, String>,
}

struct Measured {
    /// Each `peer_connected` path, in order (one seeder: usually one).
    paths: Vec<String>,
    tries: u64,
    connect_ms: u64,
    first_chunk_ms: Option<u64>,
    /// The agent's own download time (`completed.secs`).
    secs: f64,
    relay_bytes: f64,
    identical: bool,
}

impl Measured {
    fn mb_s(&self, size: u64) -> f64 {
        size as f64 / 1e6 / self.secs
    }

    /// Throughput once the first chunk is in: what the path carries, without finding it.
    fn transfer_mb_s(&self, size: u64) -> Option<f64> {
        let rest = self.secs - self.first_chunk_ms? as f64 / 1000.0;
        (rest > 0.0).then(|| size as f64 / 1e6 / rest)
    }
}

/// The two agents' hosts in `lab`: public places take public hosts, NAT places homes, in the
/// order seeder, downloader.
fn hosts(lab: &Lab, seeder: Place, downloader: Place) -> (&Host, &Host) {
    let (mut public, mut home) = (0, 0);
    let mut pick = |p: Place| match p {
        Place::Public => {
            public += 1;
            lab.public_host(public - 1)
        }
        _ => {
            home += 1;
            lab.home(home - 1).host()
        }
    };
    let s = pick(seeder);
    (s, pick(downloader))
}

struct Bench {
    cli: Cli,
    agent: PathBuf,
    tracker: PathBuf,
    work: PathBuf,
}

impl Bench {
    fn run(&self, label: &'static str, seeder: Place, downloader: Place, file: &Path) -> Run {
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "nat-matrix: {label} {} -> {} ({size} bytes)",
            seeder.name(),
            downloader.name()
        );
        let outcome = self.measure(seeder, downloader, file).map_err(|e| {
            let text = format!("{e:#}");
            eprintln!("nat-matrix:   failed: {text}");
            text
        });
        Run {
            label,
            seeder,
            downloader,
            size,
            outcome,
        }
    }

    fn measure(&self, seeder: Place, downloader: Place, file: &Path) -> Result<Measured> {
        let homes: Vec<NatKind> = [seeder, downloader]
            .iter()
            .filter_map(|p| p.nat())
            .collect();
        let publics = [seeder, downloader]
            .iter()
            .filter(|p| **p == Place::Public)
            .count();
        let lab = Lab::create(&homes, publics)?.context("the NAT lab cannot be built here")?;
        if let Some(ms) = self.cli.latency_ms {
            lab.latency(ms)?;
        }
        let dir = TempDir::new_in(&self.work)?;
        let wait = Duration::from_secs(60);
        let tracker = LabTracker::start(&lab, &self.tracker, dir.path(), &[], wait)?;
        let relay = || -> Result<f64> {
            Ok(tracker
                .metric(&lab, "torrentguard_relay_bytes_total")?
                .unwrap_or(0.0))
        };
        let relay_before = relay()?;
        let agents = Agents {
            bin: &self.agent,
            dir: dir.path(),
            tracker: &tracker,
            timeout: wait,
        };
        let (seed_host, get_host) = hosts(&lab, seeder, downloader);
        let (_seeder, id) = agents.share_on(seed_host, "seeder", file, &[])?;
        let out = dir.path().join("out");
        let mut get = agents.get_on(get_host, &id, &out, &[])?;
        let timeout = Duration::from_secs(self.cli.timeout_secs);
        let completed = match get.wait_event(timeout, "completed", |_| true) {
            Ok(c) => c,
            Err(e) => bail!("{}: {}", why(&get), first_line(&e.to_string())),
        };
        get.expect_exit(0, wait)?;
        let name = file.file_name().context("the test file has a name")?;
        let conns = connections(&get)?;
        let first = &conns[0];
        Ok(Measured {
            paths: conns.iter().map(|c| c.path.clone()).collect(),
            tries: first.tries,
            connect_ms: first.after_ms,
            first_chunk_ms: completed["first_chunk_ms"].as_u64(),
            secs: completed["secs"]
                .as_f64()
                .context("completed without secs")?,
            relay_bytes: relay()? - relay_before,
            identical: same_bytes(file, &out.join(name))?,
        })
    }
}

/// Why a download did not complete, from what the downloader said last: its latest `waiting`
/// reason, else its last stderr line.
fn why(get: &Proc) -> String {
    if let Some(w) = get.events("waiting").last() {
        return format!("waiting: {}", w["reason"].as_str().unwrap_or("?"));
    }
    let stderr = get.stderr();
    match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line) => line.to_string(),
        None => "no completed event and nothing on stderr".into(),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// `size` pseudo-random (xorshift) bytes at `path`: incompressible, cheap to make.
fn write_random(path: &Path, size: u64, seed: u64) -> Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state = seed | 1;
    let mut left = size;
    while left > 0 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        let n = left.min(8) as usize;
        w.write_all(&bytes[..n])?;
        left -= n as u64;
    }
    w.flush()?;
    Ok(())
}

fn run_json(r: &Run) -> Value {
    let mut v = json!({
        "label": r.label,
        "seeder": r.seeder.name(),
        "downloader": r.downloader.name(),
        "size": r.size,
    });
    match &r.outcome {
        Ok(m) => {
            v["paths"] = json!(m.paths);
            v["tries"] = json!(m.tries);
            v["connect_ms"] = json!(m.connect_ms);
            v["first_chunk_ms"] = json!(m.first_chunk_ms);
            v["secs"] = json!(m.secs);
            v["mb_s"] = json!(m.mb_s(r.size));
            v["transfer_mb_s"] = json!(m.transfer_mb_s(r.size));
            v["relay_bytes"] = json!(m.relay_bytes);
            v["identical"] = json!(m.identical);
        }
        Err(e) => v["error"] = json!(e),
    }
    v
}

const HEADER: &str = "| seeder | downloader | MiB | path | tries | connect ms | first chunk ms | total s | MB/s | MB/s after first chunk | relay MiB | identical |\n\
                      |---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n";

fn row(r: &Run) -> String {
    let mib = r.size as f64 / 1048576.0;
    let (s, d) = (r.seeder.name(), r.downloader.name());
    match &r.outcome {
        Err(e) => {
            let why = first_line(e).replace('|', "\\|");
            format!("| {s} | {d} | {mib:.0} | **failed**: {why} | | | | | | | | |\n")
        }
        Ok(m) => format!(
            "| {s} | {d} | {mib:.0} | {} | {} | {} | {} | {:.2} | {:.1} | {} | {:.1} | {} |\n",
            m.paths.join(", "),
            m.tries,
            m.connect_ms,
            m.first_chunk_ms.map_or("–".into(), |v| v.to_string()),
            m.secs,
            m.mb_s(r.size),
            m.transfer_mb_s(r.size)
                .map_or("–".into(), |v| format!("{v:.1}")),
            m.relay_bytes / 1048576.0,
            if m.identical { "yes" } else { "**no**" },
        ),
    }
}

/// The headline's relay-against-direct sentence, when both runs completed.
fn relay_vs_direct(headline: &[Run]) -> Option<String> {
    let find = |p: Place| {
        headline
            .iter()
            .find(|r| r.seeder == p && r.downloader == p)
            .and_then(|r| r.outcome.as_ref().ok().map(|m| (m, r.size)))
    };
    let (relayed, size) = find(Place::Symmetric)?;
    let (direct, _) = find(Place::Public)?;
    let (rel, dir) = (relayed.mb_s(size), direct.mb_s(size));
    let after = match (relayed.transfer_mb_s(size), direct.transfer_mb_s(size)) {
        (Some(r), Some(d)) => format!(
            "; from the first verified chunk on, {r:.1} against {d:.1} MB/s ({:.2})",
            r / d
        ),
        _ => String::new(),
    };
    Some(format!(
        "Through the relay against direct, {:.0} MiB: Symmetric <-> Symmetric {rel:.1} MB/s, \
         public <-> public {dir:.1} MB/s, ratio {:.2} (whole download, path finding included){after}.",
        size as f64 / 1048576.0,
        rel / dir
    ))
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// What the lab says about added latency here: probed, not assumed.
fn latency_note(cli: &Cli) -> String {
    if let Some(ms) = cli.latency_ms {
        return format!("Every run had {ms} ms added on each internet-side link (tc netem).");
    }
    let probe = Lab::create(&[], 1).map(|lab| lab.map(|l| l.latency(1)));
    match probe {
        Ok(Some(Err(LabError::NetemUnavailable(e)))) => format!(
            "No latency was added: the lab's `latency()` uses `tc netem`, and this kernel has no \
             `sch_netem` (probed at the start of this run: \"{}\"). The figures are those of a \
             zero-delay virtual network; `--latency-ms` refuses to run here rather than fake it.",
            first_line(&e)
        ),
        Ok(Some(Err(e))) => format!("No latency was added; probing tc netem failed: {e}"),
        Ok(Some(Ok(()))) => {
            "No latency was added (tc netem works here: pass --latency-ms N).".into()
        }
        Ok(None) | Err(_) => "No latency was added (the lab could not be probed).".into(),
    }
}

fn report(cli: &Cli, started: &str, load_start: &str, matrix: &[Run], headline: &[Run]) -> String {
    let mut md = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(
        md,
        "NAT reachability matrix, {started} UTC, commit {}, binaries from `{}`, {} cores (shared with \
         whatever else ran: load average {load_start} at the start, {} at the end), kernel {}. \
         Each run: a fresh NAT lab, the tracker with its relay in the internet namespace, one \
         seeder, one downloader, default chunk size. \"connect ms\" and \"tries\" are the first \
         `peer_connected` event's `after_ms` and `tries`; \"first chunk ms\" is `completed.\
         first_chunk_ms`; \"total s\" is `completed.secs`; MB/s = 10^6 bytes per second of it; \
         relay MiB is the tracker's `torrentguard_relay_bytes_total` delta (both directions, TLS \
         records included).\n",
        cli.commit,
        cli.bin_dir.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_avg(),
        kernel.trim(),
    );
    let _ = writeln!(md, "{}\n", latency_note(cli));
    if !matrix.is_empty() {
        let _ = writeln!(md, "### Every pair ({} MiB)\n", cli.size_mib);
        md.push_str(HEADER);
        matrix.iter().for_each(|r| md.push_str(&row(r)));
    }
    if !headline.is_empty() {
        let _ = writeln!(md, "\n### Headline runs ({} MiB)\n", cli.headline_mib);
        md.push_str(HEADER);
        headline.iter().for_each(|r| md.push_str(&row(r)));
        if let Some(s) = relay_vs_direct(headline) {
            let _ = writeln!(md, "\n{s}");
        }
    }
    md.push_str("\n### Raw results (JSON lines)\n\n```json\n");
    for r in matrix.iter().chain(headline) {
        let _ = writeln!(md, "{}", run_json(r));
    }
    md.push_str("```\n");
    md
}

/// Whether `--only` (if given) lists this pair.
fn wanted(cli: &Cli, s: Place, d: Place) -> bool {
    let key = format!("{}:{}", s.name(), d.name()).to_lowercase();
    cli.only.is_empty() || cli.only.iter().any(|o| o.to_lowercase() == key)
}

fn work_dir(cli: &Cli) -> PathBuf {
    cli.work.clone().unwrap_or_else(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.into()
        } else {
            std::env::temp_dir()
        }
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let started = chrono_now()?;
    let load_start = load_avg();
    let (agent, tracker) = (
        cli.bin_dir.join("torrentguard"),
        cli.bin_dir.join("torrentguard-tracker"),
    );
    for b in [&agent, &tracker] {
        if !b.is_file() {
            bail!(
                "{} is missing (build the release binaries first)",
                b.display()
            );
        }
    }
    if let Some(ms) = cli.latency_ms {
        // Refuse up front rather than fail every row (or, worse, report zero-delay figures).
        let lab = Lab::create(&[], 1)?.context("the NAT lab cannot be built here")?;
        lab.latency(ms).context("--latency-ms")?;
    }
    let files = TempDir::new_in(work_dir(&cli))?;
    let work = files.path().to_path_buf();
    let bench = Bench {
        cli,
        agent,
        tracker,
        work,
    };
    let matrix_file = bench.work.join("matrix.bin");
    write_random(&matrix_file, bench.cli.size_mib << 20, 15)?;
    let mut matrix = Vec::new();
    for s in PLACES {
        for d in PLACES {
            if wanted(&bench.cli, s, d) {
                matrix.push(bench.run("matrix", s, d, &matrix_file));
            }
        }
    }
    std::fs::remove_file(&matrix_file)?;
    let mut headline = Vec::new();
    if !bench.cli.no_headline {
        let file = bench.work.join("headline.bin");
        write_random(&file, bench.cli.headline_mib << 20, 16)?;
        for p in [Place::Symmetric, Place::PortRestricted, Place::Public] {
            headline.push(bench.run("headline", p, p, &file));
        }
    }
    let md = report(&bench.cli, &started, &load_start, &matrix, &headline);
    std::fs::write(&bench.cli.md, &md)?;
    let lines: String = matrix
        .iter()
        .chain(&headline)
        .map(|r| format!("{}\n", run_json(r)))
        .collect();
    std::fs::write(&bench.cli.jsonl, lines)?;
    print!("{md}");
    Ok(())
}

/// "YYYY-MM-DD HH:MM" in UTC, from `date` (no date crate needed for one line of a report).
fn chrono_now() -> Result<String> {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .context("running date")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(paths: &[&str], first_chunk_ms: Option<u64>, secs: f64) -> Measured {
        Measured {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            tries: 1,
            connect_ms: 3,
            first_chunk_ms,
            secs,
            relay_bytes: 0.0,
            identical: true,
        }
    }

    fn run(p: Place, q: Place, outcome: Result<Measured, String>) -> Run {
        Run {
            label: "headline",
            seeder: p,
            downloader: q,
            size: 100_000_000,
            outcome,
        }
    }

    #[test]
    fn only_selects_pairs_case_insensitively() {
        let mut cli =
            Cli::parse_from(["nat-matrix", "--bin-dir", "b", "--md", "m", "--jsonl", "j"]);
        assert!(wanted(&cli, Place::Symmetric, Place::Public));
        cli.only = vec!["symmetric:PortRestricted".into()];
        assert!(wanted(&cli, Place::Symmetric, Place::PortRestricted));
        assert!(!wanted(&cli, Place::PortRestricted, Place::Symmetric));
    }

    #[test]
    fn throughput_after_the_first_chunk_leaves_out_path_finding() {
        let m = measured(&["relayed"], Some(10_000), 12.0);
        assert_eq!(m.mb_s(120_000_000), 10.0);
        assert_eq!(m.transfer_mb_s(120_000_000), Some(60.0));
        assert_eq!(measured(&["direct"], None, 1.0).transfer_mb_s(1), None);
    }

    #[test]
    fn a_failed_pair_is_a_row_with_its_reason() {
        let r = run(
            Place::Symmetric,
            Place::Symmetric,
            Err("waiting: no path | none\nmore".into()),
        );
        let line = row(&r);
        assert!(
            line.contains("**failed**: waiting: no path \\| none |"),
            "{line}"
        );
        assert!(!line.contains("more"), "{line}");
        assert_eq!(run_json(&r)["error"], "waiting: no path | none\nmore");
    }

    #[test]
    fn relay_against_direct_needs_both_runs() {
        let relayed = run(
            Place::Symmetric,
            Place::Symmetric,
            Ok(measured(&["relayed"], Some(10_000), 11.0)),
        );
        let direct = run(
            Place::Public,
            Place::Public,
            Ok(measured(&["direct"], Some(0), 0.5)),
        );
        let text = relay_vs_direct(&[relayed, direct]).expect("both completed");
        assert!(text.contains("9.1 MB/s"), "{text}");
        assert!(text.contains("200.0 MB/s"), "{text}");
        assert!(text.contains("100.0 against 200.0 MB/s (0.50)"), "{text}");
        let failed = run(Place::Public, Place::Public, Err("x".into()));
        let relayed = run(
            Place::Symmetric,
            Place::Symmetric,
            Ok(measured(&["relayed"], None, 11.0)),
        );
        assert!(relay_vs_direct(&[relayed, failed]).is_none());
    }

    #[test]
    fn forwarded_homes_forward_both_agent_ports() {
        assert_eq!(
            Place::Forwarded.nat(),
            Some(NatKind::Forwarded(vec![SEED_PORT, GET_PORT]))
        );
        assert_eq!(Place::Public.nat(), None);
    }
}
