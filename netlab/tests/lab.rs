//! The NAT lab checked with plain TCP (`netlab-probe`): each NAT kind maps and filters as its
//! name says, hole punching works where it should and only there, and nothing is left behind.
//!
//! Needs root, iproute2 and iptables; skips (with "SKIPPED: …") elsewhere, unless
//! `TORRENTGUARD_REQUIRE_NETNS` is set.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use torrentguard_netlab::{Host, Lab, LabError, NatKind};

const WAIT: Duration = Duration::from_secs(20);

fn probe() -> &'static str {
    env!("CARGO_BIN_EXE_netlab-probe")
}

/// A probe process, killed when dropped, its stdout lines on a channel.
struct Probe {
    child: Child,
    lines: Receiver<String>,
}

impl Probe {
    fn spawn(mut cmd: Command) -> Result<Probe> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Probe { child, lines })
    }

    /// The next stdout line, within [`WAIT`].
    fn line(&mut self) -> Result<String> {
        self.lines
            .recv_timeout(WAIT)
            .context("no line from the probe in time (or it exited)")
    }

    /// `listen PORT` on `host`, once it is listening.
    fn listen(host: &Host, port: u16) -> Result<Probe> {
        let mut cmd = host.command(probe());
        cmd.args(["listen", &port.to_string()]);
        let mut p = Probe::spawn(cmd)?;
        let line = p.line()?;
        ensure!(line.starts_with("listening "), "unexpected: {line}");
        Ok(p)
    }

    /// The peer address of the next accepted connection.
    fn accepted(&mut self) -> Result<SocketAddrV4> {
        let line = self.line()?;
        let addr = line
            .strip_prefix("accepted ")
            .with_context(|| format!("unexpected: {line}"))?;
        Ok(addr.parse()?)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `connect ADDR --from PORT` in `cmd` to its end: Ok(local address) or Err(its line).
fn connect(mut cmd: Command, to: SocketAddrV4, from: u16) -> Result<String> {
    let out = cmd
        .args(["connect", &to.to_string(), "--from", &from.to_string()])
        .args(["--timeout-ms", "2000"])
        .output()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match line.strip_prefix("connected ") {
        Some(local) if out.status.success() => Ok(local.to_string()),
        _ => bail!("{line}"),
    }
}

fn lab(homes: &[NatKind], public: usize) -> Result<Option<Lab>> {
    Ok(Lab::create(homes, public)?)
}

/// Behind PortRestricted the public host sees the router's address and the host's own port.
#[test]
fn port_restricted_keeps_the_source_port() -> Result<()> {
    let Some(lab) = lab(&[NatKind::PortRestricted], 1)? else {
        return Ok(());
    };
    let server = lab.public_host(0);
    let mut listener = Probe::listen(server, 7000)?;
    let to = SocketAddrV4::new(server.ip(), 7000);
    let home = lab.home(0);
    let local = connect(home.command(probe()), to, 40_000)?;
    assert_eq!(local, format!("{}:40000", home.ip()));
    let seen = listener.accepted()?;
    assert_eq!(seen, SocketAddrV4::new(home.public_ip(), 40_000));
    // Endpoint-independent mapping: the same source port again, to another destination.
    let mut other = Probe::listen(server, 7001)?;
    connect(
        home.command(probe()),
        SocketAddrV4::new(server.ip(), 7001),
        40_000,
    )?;
    assert_eq!(
        other.accepted()?,
        SocketAddrV4::new(home.public_ip(), 40_000)
    );
    Ok(())
}

/// Behind Symmetric the public port is random: two connections from two local ports are not
/// both seen with their own port (chance of a false failure: about 1 in 4·10⁹).
#[test]
fn symmetric_changes_the_source_port() -> Result<()> {
    let Some(lab) = lab(&[NatKind::Symmetric], 1)? else {
        return Ok(());
    };
    let server = lab.public_host(0);
    let mut listener = Probe::listen(server, 7000)?;
    let to = SocketAddrV4::new(server.ip(), 7000);
    let home = lab.home(0);
    let mut preserved = 0;
    for from in [40_000, 40_001] {
        connect(home.command(probe()), to, from)?;
        let seen = listener.accepted()?;
        assert_eq!(*seen.ip(), home.public_ip());
        preserved += usize::from(seen.port() == from);
    }
    assert!(preserved < 2, "the symmetric NAT kept both source ports");
    Ok(())
}

/// Unsolicited inbound to a home's public address: dropped by PortRestricted and Symmetric,
/// forwarded to the host by Forwarded.
#[test]
fn only_forwarded_homes_accept_unsolicited_inbound() -> Result<()> {
    let kinds = [
        NatKind::PortRestricted,
        NatKind::Symmetric,
        NatKind::Forwarded(vec![7000]),
    ];
    let Some(lab) = lab(&kinds, 1)? else {
        return Ok(());
    };
    let outside = lab.public_host(0);
    let mut listeners = Vec::new();
    for home in lab.homes() {
        listeners.push(Probe::listen(home.host(), 7000)?);
    }
    for home in &lab.homes()[..2] {
        let to = SocketAddrV4::new(home.public_ip(), 7000);
        let result = connect(outside.command(probe()), to, 0);
        assert!(result.is_err(), "{} let {to} in: {result:?}", home.kind());
    }
    let forwarded = lab.home(2);
    connect(
        outside.command(probe()),
        SocketAddrV4::new(forwarded.public_ip(), 7000),
        0,
    )?;
    // DNAT only: the host sees the real client.
    assert_eq!(*listeners[2].accepted()?.ip(), outside.ip());
    Ok(())
}

/// Both homes punch at the same agreed instant, each from its port to the other's public
/// address at that same port; returns what each side printed.
fn punch(lab: &Lab, port: u16) -> Result<[String; 2]> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let at = (now + 1000).to_string();
    let mut probes = Vec::new();
    for (me, other) in [(0, 1), (1, 0)] {
        let to = SocketAddr::from((lab.home(other).public_ip(), port));
        let mut cmd = lab.home(me).command(probe());
        cmd.args([
            "punch",
            "--from",
            &port.to_string(),
            "--to",
            &to.to_string(),
        ])
        .args(["--at", &at]);
        probes.push(Probe::spawn(cmd)?);
    }
    Ok([probes[0].line()?, probes[1].line()?])
}

#[test]
fn punching_between_port_restricted_homes_succeeds() -> Result<()> {
    let Some(lab) = lab(&[NatKind::PortRestricted, NatKind::PortRestricted], 0)? else {
        return Ok(());
    };
    let [a, b] = punch(&lab, 41_000)?;
    let expect = |line: &str, me: usize, other: usize| {
        let want = format!(
            "ok {}:41000 {}:41000",
            lab.home(me).ip(),
            lab.home(other).public_ip()
        );
        assert_eq!(line, want);
    };
    expect(&a, 0, 1);
    expect(&b, 1, 0);
    Ok(())
}

#[test]
fn punching_between_symmetric_homes_fails() -> Result<()> {
    let Some(lab) = lab(&[NatKind::Symmetric, NatKind::Symmetric], 0)? else {
        return Ok(());
    };
    for line in punch(&lab, 41_000)? {
        assert!(line.starts_with("failed "), "{line}");
    }
    Ok(())
}

fn namespaces_tagged(tag: &str) -> Result<Vec<String>> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    ensure!(out.status.success(), "ip netns list failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{tag}-")))
        .map(str::to_string)
        .collect())
}

#[test]
fn dropping_the_lab_deletes_its_namespaces() -> Result<()> {
    let Some(lab) = lab(&[NatKind::Symmetric, NatKind::Forwarded(vec![1])], 2)? else {
        return Ok(());
    };
    let tag = lab.tag().to_string();
    // internet + 2 public hosts + 2 × (router + host)
    assert_eq!(namespaces_tagged(&tag)?.len(), 7);
    drop(lab);
    assert_eq!(namespaces_tagged(&tag)?, Vec::<String>::new());
    Ok(())
}

/// Hosts reach the internet namespace (where the tracker runs) from behind every NAT.
#[test]
fn every_host_reaches_the_internet_namespace() -> Result<()> {
    let Some(lab) = lab(&[NatKind::Symmetric, NatKind::PortRestricted], 1)? else {
        return Ok(());
    };
    let mut listener = Probe::listen(lab.internet(), 7000)?;
    let to = SocketAddrV4::new(torrentguard_netlab::INTERNET_IP, 7000);
    connect(lab.public_host(0).command(probe()), to, 0)?;
    assert_eq!(*listener.accepted()?.ip(), lab.public_host(0).ip());
    for home in lab.homes() {
        connect(home.command(probe()), to, 0)?;
        assert_eq!(*listener.accepted()?.ip(), home.public_ip());
    }
    Ok(())
}

/// `latency` puts a netem delay on every bridge port, or says plainly that this kernel has no
/// netem (typed error, not a generic failure).
#[test]
fn latency_sets_netem_on_every_port_or_reports_it_missing() -> Result<()> {
    let Some(lab) = lab(&[NatKind::PortRestricted], 1)? else {
        return Ok(());
    };
    match lab.latency(25) {
        Ok(()) => {
            let out = lab
                .internet()
                .command("tc")
                .args(["qdisc", "show"])
                .output()?;
            let shown = String::from_utf8_lossy(&out.stdout);
            for port in ["p0", "r0"] {
                assert!(
                    shown
                        .lines()
                        .any(|l| l.contains(&format!("dev {port} ")) && l.contains("delay 25ms")),
                    "{shown}"
                );
            }
            lab.latency(0)?;
        }
        Err(LabError::NetemUnavailable(why)) => {
            eprintln!("SKIPPED: tc netem unavailable here: {why}");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
