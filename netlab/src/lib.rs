//! The NAT lab: a small internet with home networks behind NAT routers, built from network
//! namespaces this process creates, for tests and benchmarks that need peers which cannot simply
//! dial each other.
//!
//! ```text
//!                        internet namespace (bridge br0, 100.64.0.1 = tracker/relay host)
//!          ┌───────────────┬──────────┴─────────┬────────────────────┐
//!   public host 0      router 0 (wan 100.64.0.10)   router 1 (wan 100.64.0.11)  …
//!   100.64.0.2         │ NAT: NatKind            │
//!                      home host 0 192.168.1.2   home host 1 192.168.2.2
//! ```
//!
//! Every router masquerades its LAN behind its public address; its [`NatKind`] says how:
//! - [`NatKind::Forwarded`]: port-preserving, endpoint-independent mapping plus a port forward of
//!   the given TCP ports to the home host: reachable inbound on them;
//! - [`NatKind::PortRestricted`]: the same mapping, but only conntrack-established traffic comes
//!   back in (address-and-port-dependent filtering): hole punching works;
//! - [`NatKind::Symmetric`]: `MASQUERADE --random-fully`, a new random public port per
//!   connection, with the same filtering: hole punching fails.
//!
//! Unsolicited inbound packets are dropped, not refused, as home routers do: a reset from the
//! router would end the other side's half of a simultaneous open before it could succeed.
//!
//! Names are tagged with the process id and a per-process counter, leftovers of the same tag are
//! removed on creation, and everything is deleted when the [`Lab`] drops. Processes started with
//! [`Host::command`] should be ended before that (declare the lab before them).

pub mod swarm;

use std::ffi::OsStr;
use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub mod upnp;

/// With this variable set, a lab that cannot be built is an error instead of a skip.
pub const REQUIRE_ENV: &str = "TORRENTGUARD_REQUIRE_NETNS";

/// The internet namespace's own address on the bridge: where the tracker and relay run.
pub const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

/// Public hosts take 100.64.0.2 up to 100.64.0.9, routers 100.64.0.10 onwards.
const MAX_PUBLIC: usize = 8;
/// Home `i` has the LAN 192.168.(i+1).0/24.
const MAX_HOMES: usize = 200;

/// How a home's router translates and filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatKind {
    /// Port-preserving masquerade plus DNAT of these TCP ports to the home host.
    Forwarded(Vec<u16>),
    /// Port-preserving masquerade; only replies to connections from inside come back.
    PortRestricted,
    /// Masquerade to a random public port per connection; only replies come back.
    Symmetric,
    /// As `PortRestricted`, plus a UPnP-IGD service (miniupnpd) that maps ports on request.
    Upnp,
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatKind::Forwarded(ports) => write!(f, "Forwarded{ports:?}"),
            NatKind::PortRestricted => f.write_str("PortRestricted"),
            NatKind::Upnp => f.write_str("Upnp"),
            NatKind::Symmetric => f.write_str("Symmetric"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("a lab holds at most {max} {what}, not {asked}")]
    TooMany {
        what: &'static str,
        max: usize,
        asked: usize,
    },
    #[error("tc netem is not available here (this kernel may lack sch_netem): {0}")]
    NetemUnavailable(String),
    #[error("{REQUIRE_ENV} is set, but the lab cannot be built here: {0}")]
    Required(Box<LabError>),
}

pub type Result<T> = std::result::Result<T, LabError>;

/// Runs `program args…` to completion, returning its stdout, or its stderr as the error.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One machine of the lab: a network namespace and its address.
#[derive(Debug)]
pub struct Host {
    netns: String,
    ip: Ipv4Addr,
}

impl Host {
    /// Its address: on the bridge for the internet and public hosts, on its LAN for home hosts,
    /// the public (WAN) address for routers.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The namespace's name (for `ip netns exec`, `ip -n`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// `program` run inside this host: `ip netns exec NS program`; add arguments as usual.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Runs `program args…` inside this host to completion.
    pub(crate) fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.netns, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip -n NS args…`
    fn ip_cmd(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", &self.netns];
        full.extend_from_slice(args);
        run("ip", &full).map(drop)
    }
}

/// A home network: a host behind its own NAT router.
#[derive(Debug)]
pub struct Home {
    kind: NatKind,
    host: Host,
    router: Host,
    /// The UPnP service of an [`NatKind::Upnp`] router, stopped before the namespaces go.
    upnp: Option<upnp::Miniupnpd>,
}

impl Home {
    /// The home host's LAN address, 192.168.(i+1).2.
    pub fn ip(&self) -> Ipv4Addr {
        self.host.ip
    }

    /// The router's address on the internet, 100.64.0.(10+i).
    pub fn public_ip(&self) -> Ipv4Addr {
        self.router.ip
    }

    pub fn kind(&self) -> &NatKind {
        &self.kind
    }

    /// `program` run on the home host (behind the NAT).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.host.command(program)
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn router(&self) -> &Host {
        &self.router
    }

    /// The port mappings an [`NatKind::Upnp`] router holds now (its DNAT rules; none for the
    /// other kinds).
    pub fn upnp_mappings(&self) -> Result<Vec<String>> {
        match self.upnp {
            Some(_) => upnp::Miniupnpd::mappings(&self.router),
            None => Ok(Vec::new()),
        }
    }
}

/// Namespaces created so far, deleted (newest first) when dropped: a lab whose construction
/// fails half-way leaves nothing behind either.
#[derive(Debug, Default)]
struct Namespaces(Vec<String>);

impl Namespaces {
    /// Creates namespace `name` with its loopback up.
    fn add(&mut self, name: String, ip: Ipv4Addr) -> Result<Host> {
        run("ip", &["netns", "add", &name])?;
        self.0.push(name.clone());
        let host = Host { netns: name, ip };
        host.ip_cmd(&["link", "set", "lo", "up"])?;
        Ok(host)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.0.iter().rev() {
            if let Err(e) = run("ip", &["netns", "delete", name]) {
                eprintln!("netlab: could not delete namespace {name}: {e}");
            }
        }
    }
}

/// The whole lab; dropping it deletes every namespace (and with them every link) it made.
#[derive(Debug)]
pub struct Lab {
    tag: String,
    internet: Host,
    public: Vec<Host>,
    homes: Vec<Home>,
    /// The bridge ports in the internet namespace, one per public host and router.
    ports: Vec<String>,
    // Last field: dropped after the hosts that name its namespaces.
    namespaces: Namespaces,
}

impl Lab {
    /// Builds the internet, `public_hosts` hosts directly on it, and one home per entry of
    /// `homes`. `Ok(None)`, after printing "SKIPPED: …" on stderr, where namespaces or iptables
    /// are unavailable, unless [`REQUIRE_ENV`] is set: then that is an error.
    pub fn create(homes: &[NatKind], public_hosts: usize) -> Result<Option<Lab>> {
        check_counts(homes.len(), public_hosts)?;
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "tgl{}n{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        delete_leftovers(&tag)?;
        let mut namespaces = Namespaces::default();
        let internet = match make_internet(&mut namespaces, &tag) {
            Ok(internet) => internet,
            Err(e) if std::env::var_os(REQUIRE_ENV).is_none() => {
                eprintln!(
                    "SKIPPED: cannot build the NAT lab here ({e}); it needs root, iproute2 and \
                     iptables (.ci/run provides them and sets {REQUIRE_ENV})"
                );
                return Ok(None);
            }
            Err(e) => return Err(LabError::Required(Box::new(e))),
        };
        let mut lab = Lab {
            tag,
            internet,
            public: Vec::new(),
            homes: Vec::new(),
            ports: Vec::new(),
            namespaces,
        };
        for i in 0..public_hosts {
            lab.add_public(i)?;
        }
        for (i, kind) in homes.iter().enumerate() {
            lab.add_home(i, kind.clone())?;
        }
        Ok(Some(lab))
    }

    /// The prefix of every namespace name of this lab.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The internet namespace itself, at [`INTERNET_IP`]: run the tracker and relay here.
    pub fn internet(&self) -> &Host {
        &self.internet
    }

    /// Public host `i` (100.64.0.(2+i)), on the internet without NAT. Panics if out of range,
    /// like indexing.
    pub fn public_host(&self, i: usize) -> &Host {
        &self.public[i]
    }

    /// Home `i`, in the order given to [`Lab::create`]. Panics if out of range, like indexing.
    pub fn home(&self, i: usize) -> &Home {
        &self.homes[i]
    }

    pub fn homes(&self) -> &[Home] {
        &self.homes
    }

    /// Delays every packet the internet's bridge sends out of a port by `ms` milliseconds
    /// (`tc netem` on the internet-side end of each link): between two homes the round trip
    /// grows by 2·`ms`, between a home and the internet namespace by `ms`. 0 removes the delay.
    pub fn latency(&self, ms: u32) -> Result<()> {
        for port in &self.ports {
            let result = if ms == 0 {
                self.internet
                    .exec("tc", &["qdisc", "del", "dev", port, "root"])
                    .or_else(|e| match &e {
                        // Nothing to remove: no delay was set.
                        LabError::Failed { stderr, .. } if stderr.contains("such file") => {
                            Ok(String::new())
                        }
                        _ => Err(e),
                    })
            } else {
                let delay = format!("{ms}ms");
                self.internet.exec(
                    "tc",
                    &[
                        "qdisc", "replace", "dev", port, "root", "netem", "delay", &delay,
                    ],
                )
            };
            result.map_err(|e| match e {
                LabError::Failed { stderr, .. } if stderr.contains("qdisc kind is unknown") => {
                    LabError::NetemUnavailable(stderr)
                }
                other => other,
            })?;
        }
        Ok(())
    }

    /// A veth pair from `host` (its end named `ifname`, addressed `ip`/24) to a new port `port`
    /// of the internet's bridge.
    fn attach(&mut self, host: &Host, ifname: &str, port: String) -> Result<()> {
        let inet = self.internet.netns.clone();
        host.ip_cmd(&[
            "link", "add", ifname, "type", "veth", "peer", "name", &port, "netns", &inet,
        ])?;
        self.internet
            .ip_cmd(&["link", "set", &port, "master", "br0", "up"])?;
        self.ports.push(port);
        host.ip_cmd(&["addr", "add", &format!("{}/24", host.ip), "dev", ifname])?;
        host.ip_cmd(&["link", "set", ifname, "up"])
    }

    fn add_public(&mut self, i: usize) -> Result<()> {
        let ip = Ipv4Addr::new(100, 64, 0, 2 + i as u8);
        let host = self.namespaces.add(format!("{}-p{i}", self.tag), ip)?;
        self.attach(&host, "eth0", format!("p{i}"))?;
        self.public.push(host);
        Ok(())
    }

    fn add_home(&mut self, i: usize, kind: NatKind) -> Result<()> {
        let public_ip = Ipv4Addr::new(100, 64, 0, 10 + i as u8);
        let router = self
            .namespaces
            .add(format!("{}-r{i}", self.tag), public_ip)?;
        self.attach(&router, "wan", format!("r{i}"))?;
        let lan = Ipv4Addr::new(192, 168, i as u8 + 1, 1);
        let host_ip = Ipv4Addr::new(192, 168, i as u8 + 1, 2);
        let host = self.namespaces.add(format!("{}-h{i}", self.tag), host_ip)?;
        host.ip_cmd(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "lan",
            "netns",
            &router.netns,
        ])?;
        router.ip_cmd(&["addr", "add", &format!("{lan}/24"), "dev", "lan"])?;
        router.ip_cmd(&["link", "set", "lan", "up"])?;
        host.ip_cmd(&["addr", "add", &format!("{host_ip}/24"), "dev", "eth0"])?;
        host.ip_cmd(&["link", "set", "eth0", "up"])?;
        host.ip_cmd(&["route", "add", "default", "via", &lan.to_string()])?;
        router.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        for rule in nat_rules(&kind, host_ip) {
            let args: Vec<&str> = rule.iter().map(String::as_str).collect();
            router.exec("iptables", &args)?;
        }
        let upnp = match kind {
            NatKind::Upnp => Some(upnp::Miniupnpd::start(
                &router,
                i,
                Ipv4Addr::new(192, 168, i as u8 + 1, 0),
            )?),
            _ => None,
        };
        self.homes.push(Home {
            kind,
            host,
            router,
            upnp,
        });
        Ok(())
    }
}

fn check_counts(homes: usize, public: usize) -> Result<()> {
    if public > MAX_PUBLIC {
        return Err(LabError::TooMany {
            what: "public hosts",
            max: MAX_PUBLIC,
            asked: public,
        });
    }
    if homes > MAX_HOMES {
        return Err(LabError::TooMany {
            what: "homes",
            max: MAX_HOMES,
            asked: homes,
        });
    }
    Ok(())
}

/// The internet namespace with its bridge; also checks that iptables runs, since a lab without
/// NAT would make every test about NAT meaningless.
fn make_internet(namespaces: &mut Namespaces, tag: &str) -> Result<Host> {
    let internet = namespaces.add(format!("{tag}-inet"), INTERNET_IP)?;
    internet.ip_cmd(&["link", "add", "br0", "type", "bridge"])?;
    internet.ip_cmd(&["addr", "add", &format!("{INTERNET_IP}/24"), "dev", "br0"])?;
    internet.ip_cmd(&["link", "set", "br0", "up"])?;
    internet.exec("iptables", &["-w", "-L", "-n"])?;
    Ok(internet)
}

/// Deletes namespaces named `TAG-…`: what a killed earlier process with the same pid left.
fn delete_leftovers(tag: &str) -> Result<()> {
    let prefix = format!("{tag}-");
    let listed = match run("ip", &["netns", "list"]) {
        Ok(listed) => listed,
        // No iproute2 at all: creating the lab will say so (and skip).
        Err(LabError::Spawn { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in listed.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(&prefix) {
            run("ip", &["netns", "delete", name])?;
        }
    }
    Ok(())
}

/// The router's iptables commands (arguments after `iptables`) for `kind`, the home host being
/// `host`. Interfaces: `wan` towards the internet, `lan` towards the home.
fn nat_rules(kind: &NatKind, host: Ipv4Addr) -> Vec<Vec<String>> {
    let rule = |s: &str| -> Vec<String> {
        std::iter::once("-w")
            .chain(s.split_whitespace())
            .map(str::to_string)
            .collect()
    };
    let mut rules = vec![
        // Filtering: only what conntrack relates to a connection from inside (or a configured
        // port forward) comes in; the rest is dropped silently.
        rule("-A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"),
        rule("-A INPUT -i wan -j DROP"),
        rule("-A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED,DNAT -j ACCEPT"),
        rule("-A FORWARD -i wan -o lan -j DROP"),
    ];
    match kind {
        // Linux keeps the source port when it is free: endpoint-independent mapping.
        NatKind::Forwarded(_) | NatKind::PortRestricted | NatKind::Upnp => {
            rules.push(rule("-t nat -A POSTROUTING -o wan -j MASQUERADE"));
        }
        NatKind::Symmetric => {
            rules.push(rule(
                "-t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully",
            ));
        }
    }
    if let NatKind::Forwarded(ports) = kind {
        for port in ports {
            rules.push(rule(&format!(
                "-t nat -A PREROUTING -i wan -p tcp --dport {port} -j DNAT --to-destination \
                 {host}:{port}"
            )));
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(kind: &NatKind) -> Vec<String> {
        nat_rules(kind, Ipv4Addr::new(192, 168, 1, 2))
            .into_iter()
            .map(|r| r.join(" "))
            .collect()
    }

    #[test]
    fn symmetric_randomises_and_others_preserve_ports() {
        let sym = joined(&NatKind::Symmetric);
        assert!(sym.iter().any(|r| r.ends_with("MASQUERADE --random-fully")));
        for kind in [NatKind::PortRestricted, NatKind::Forwarded(vec![7000])] {
            let rules = joined(&kind);
            assert!(rules.iter().any(|r| r.ends_with("-j MASQUERADE")), "{kind}");
            assert!(!rules.iter().any(|r| r.contains("random")), "{kind}");
        }
    }

    #[test]
    fn every_kind_drops_unsolicited_inbound() {
        for kind in [
            NatKind::Symmetric,
            NatKind::PortRestricted,
            NatKind::Forwarded(vec![]),
        ] {
            let rules = joined(&kind);
            assert!(rules.contains(&"-w -A INPUT -i wan -j DROP".to_string()));
            assert!(rules.contains(&"-w -A FORWARD -i wan -o lan -j DROP".to_string()));
        }
    }

    #[test]
    fn forwarded_ports_go_to_the_home_host() {
        let rules = joined(&NatKind::Forwarded(vec![7000, 7001]));
        let dnat: Vec<_> = rules.iter().filter(|r| r.contains("DNAT --to")).collect();
        assert_eq!(dnat.len(), 2);
        assert!(dnat[1].ends_with("--dport 7001 -j DNAT --to-destination 192.168.1.2:7001"));
        assert!(
            !joined(&NatKind::PortRestricted)
                .iter()
                .any(|r| r.contains("DNAT --to"))
        );
    }

    fn listed() -> Vec<String> {
        run("ip", &["netns", "list"])
            .expect("ip netns list")
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Only namespaces of exactly this tag go: `…n1-` is not a prefix of `…n10-…`.
    #[test]
    fn leftovers_of_the_same_tag_are_deleted_and_no_others() {
        let tag = format!("tglt{}n1", std::process::id());
        let (mine, other) = (format!("{tag}-inet"), format!("{tag}0-inet"));
        if let Err(e) = run("ip", &["netns", "add", &mine]) {
            assert!(std::env::var_os(REQUIRE_ENV).is_none(), "{e}");
            eprintln!("SKIPPED: cannot create a namespace here: {e}");
            return;
        }
        run("ip", &["netns", "add", &other]).expect("a second namespace");
        delete_leftovers(&tag).expect("deleting leftovers");
        let after = listed();
        let _ = run("ip", &["netns", "delete", &other]);
        assert!(!after.contains(&mine), "{after:?}");
        assert!(after.contains(&other), "{after:?}");
    }

    #[test]
    fn counts_are_bounded() {
        assert!(check_counts(MAX_HOMES, MAX_PUBLIC).is_ok());
        assert!(matches!(
            check_counts(0, MAX_PUBLIC + 1),
            Err(LabError::TooMany {
                what: "public hosts",
                ..
            })
        ));
        assert!(matches!(
            check_counts(MAX_HOMES + 1, 0),
            Err(LabError::TooMany { what: "homes", .. })
        ));
    }
}
