//! A router that offers UPnP-IGD: Debian's `miniupnpd` running in the router's namespace, on
//! top of the port-restricted NAT, adding a DNAT (and a forward accept) for each mapping a
//! host on the LAN asks for.
//!
//! miniupnpd refuses to map anything when its external address is private or reserved (as a
//! real router behind carrier-grade NAT would), and the lab's internet is 100.64.0.0/24, so the
//! router declares `11.0.0.(10+i)` as its address (`ext_ip`): a placeholder no packet is ever
//! sent to. Its rules match on the WAN interface, not on that address, so inbound connections
//! to the router's lab address reach the mapped host. Agents announce the address the tracker
//! sees, never what the router claims.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{Host, LabError, Result};

/// How long miniupnpd may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The nftables skeleton miniupnpd fills (Debian's `nft_init.sh` does the same, but needs
/// `$NFT` set by a file the package does not ship).
const NFT_TABLES: &str = "table inet filter {
    chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
    chain miniupnpd { }
    chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
    chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
    chain prerouting_miniupnpd { }
    chain postrouting_miniupnpd { }
}
";

/// A running miniupnpd, stopped (and its files removed) when dropped.
#[derive(Debug)]
pub struct Miniupnpd {
    child: Child,
    dir: PathBuf,
}

impl Miniupnpd {
    /// Starts miniupnpd in `router` (interfaces `wan` and `lan`) for the LAN `lan_net`/24,
    /// home `i`; returns once it listens for requests.
    pub(crate) fn start(router: &Host, i: usize, lan_net: Ipv4Addr) -> Result<Miniupnpd> {
        let dir = std::env::temp_dir().join(format!("{}-upnp", router.netns()));
        std::fs::create_dir_all(&dir).map_err(|e| io_error("creating", &dir, e))?;
        let nft = dir.join("tables.nft");
        std::fs::write(&nft, NFT_TABLES).map_err(|e| io_error("writing", &nft, e))?;
        router.exec("nft", &["-f", &nft.to_string_lossy()])?;
        let conf = dir.join("miniupnpd.conf");
        std::fs::write(&conf, config(i, lan_net)).map_err(|e| io_error("writing", &conf, e))?;
        let mut child = router
            .command("miniupnpd")
            .args(["-d", "-f"])
            .arg(&conf)
            .arg("-P")
            .arg(dir.join("miniupnpd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: "miniupnpd (apt package miniupnpd)".into(),
                source,
            })?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let daemon = Miniupnpd { child, dir };
        wait_listening(stderr)?;
        Ok(daemon)
    }

    /// The mappings in place now, as `nft` lists the DNAT chain (empty: none).
    pub fn mappings(router: &Host) -> Result<Vec<String>> {
        let listed = router.exec(
            "nft",
            &["list", "chain", "inet", "filter", "prerouting_miniupnpd"],
        )?;
        Ok(listed
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("dnat"))
            .map(str::to_string)
            .collect())
    }
}

impl Drop for Miniupnpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(i: usize, lan_net: Ipv4Addr) -> String {
    format!(
        "ext_ifname=wan\nlistening_ip=lan\nenable_upnp=yes\nenable_natpmp=yes\nsecure_mode=yes\n\
         system_uptime=yes\next_ip=11.0.0.{}\n\
         allow 1024-65535 {lan_net}/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
        10 + i
    )
}

/// Reads miniupnpd's log (stderr, `-d`) until it says it listens, within [`START_TIMEOUT`];
/// the rest of the log is drained in the background so the daemon never blocks on it.
fn wait_listening(stderr: std::process::ChildStderr) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut said = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if line.contains("HTTP listening on port") {
                let _ = tx.send(Ok(()));
            } else if said.len() < 20 {
                said.push(line);
            }
        }
        let _ = tx.send(Err(said.join("; ")));
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(log)) => Err(LabError::Failed {
            command: "miniupnpd".into(),
            stderr: log,
        }),
        Err(_) => Err(LabError::Failed {
            command: "miniupnpd".into(),
            stderr: format!("not listening within {START_TIMEOUT:?}"),
        }),
    }
}

fn io_error(what: &str, path: &std::path::Path, e: std::io::Error) -> LabError {
    LabError::Failed {
        command: format!("{what} {}", path.display()),
        stderr: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_maps_only_for_the_home_lan_and_declares_a_public_address() {
        let c = config(3, Ipv4Addr::new(192, 168, 4, 0));
        assert!(c.contains("ext_ip=11.0.0.13\n"), "{c}");
        assert!(
            c.contains("allow 1024-65535 192.168.4.0/24 1024-65535\n"),
            "{c}"
        );
        assert!(c.ends_with("deny 0-65535 0.0.0.0/0 0-65535\n"), "{c}");
    }
}
