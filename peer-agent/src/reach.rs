//! How other hosts reach this one: the address an agent advertises to the tracker
//! (`--advertise ADDR[:PORT]`), and the host named in the `get` command that `share` prints.
//!
//! The tracker lists a peer at the address its announce came from. That is right across a LAN,
//! wrong for a peer that reaches its tracker over loopback (the tracker then answers others with
//! the address they used to reach it) and wrong behind NAT or port forwarding, which is what
//! `--advertise` is for.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReachError {
    #[error(
        "{0:?} is not ADDR or ADDR:PORT (an IP address or host name, IPv6 in brackets with a port)"
    )]
    Syntax(String),
    #[error("{0:?}: port 0 cannot be dialled")]
    PortZero(String),
    #[error("cannot resolve {host:?}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{0} cannot be dialled by other hosts (unspecified or multicast)")]
    NotDialable(IpAddr),
}

/// `--advertise` as typed: a host (IP literal or name) and maybe a port, not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertiseSpec {
    pub host: String,
    pub port: Option<u16>,
}

impl FromStr for AdvertiseSpec {
    type Err = ReachError;

    fn from_str(s: &str) -> Result<Self, ReachError> {
        let s = s.trim();
        let syntax = || ReachError::Syntax(s.to_string());
        if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(ReachError::PortZero(s.to_string()));
            }
            return Ok(AdvertiseSpec {
                host: sa.ip().to_string(),
                port: Some(sa.port()),
            });
        }
        if let Ok(ip) = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s)
            .parse::<IpAddr>()
        {
            return Ok(AdvertiseSpec {
                host: ip.to_string(),
                port: None,
            });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p.parse().map_err(|_| syntax())?;
                if port == 0 {
                    return Err(ReachError::PortZero(s.to_string()));
                }
                (h, Some(port))
            }
            None => (s, None),
        };
        let valid_name = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid_name {
            return Err(syntax());
        }
        Ok(AdvertiseSpec {
            host: host.to_string(),
            port,
        })
    }
}

/// `--advertise`, resolved once at start: the name others are told (as typed), the IP sent to
/// the tracker, and the port if it differs from the listening one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertise {
    pub host: String,
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl AdvertiseSpec {
    /// Resolves the host (an IP literal needs no lookup); IPv4 is preferred among a name's
    /// addresses, as most LANs route it.
    pub async fn resolve(&self) -> Result<Advertise, ReachError> {
        let ip = match self.host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                let addrs: Vec<IpAddr> = tokio::net::lookup_host((self.host.as_str(), 0))
                    .await
                    .map_err(|e| ReachError::Resolve {
                        host: self.host.clone(),
                        reason: e.to_string(),
                    })?
                    .map(|a| a.ip())
                    .collect();
                let first = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first());
                *first.ok_or_else(|| ReachError::Resolve {
                    host: self.host.clone(),
                    reason: "no addresses".into(),
                })?
            }
        };
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(ReachError::NotDialable(ip));
        }
        Ok(Advertise {
            host: self.host.clone(),
            ip,
            port: self.port,
        })
    }
}

/// The host other machines should dial to reach a service of ours bound to `bound`:
/// the `--advertise` host if given; else the bound address if it is a specific one; else (a
/// wildcard) this host's LAN address. `None` when the service is on loopback only, or no
/// interface but loopback is up.
pub fn public_host(bound: SocketAddr, advertise: Option<&Advertise>) -> Option<String> {
    if let Some(a) = advertise {
        return Some(bracketed(&a.host));
    }
    let ip = bound.ip().to_canonical();
    if ip.is_loopback() {
        return None;
    }
    if !ip.is_unspecified() {
        return Some(bracketed(&ip.to_string()));
    }
    let interfaces = if_addrs::get_if_addrs().ok()?;
    let candidates = interfaces
        .iter()
        .filter(|i| i.is_oper_up() || i.oper_status == if_addrs::IfOperStatus::Unknown)
        .map(|i| i.ip());
    lan_address(candidates, bound.is_ipv6()).map(|ip| bracketed(&ip.to_string()))
}

/// The best address among `candidates` for others to dial: not loopback, link-local,
/// unspecified or multicast; IPv4 first (an IPv6 wildcard socket accepts IPv4 too) unless the
/// service is IPv4-only, in which case IPv6 addresses do not count.
fn lan_address(candidates: impl Iterator<Item = IpAddr>, dual_stack: bool) -> Option<IpAddr> {
    let usable: Vec<IpAddr> = candidates
        .filter(|ip| {
            !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || is_link_local(ip))
        })
        .collect();
    usable
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| usable.iter().find(|ip| dual_stack && ip.is_ipv6()))
        .copied()
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// A host as it goes before `:port` in a URL: IPv6 literals in brackets.
fn bracketed(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<AdvertiseSpec, ReachError> {
        s.parse()
    }

    #[test]
    fn advertise_forms() {
        let s = |h: &str, p: Option<u16>| AdvertiseSpec {
            host: h.into(),
            port: p,
        };
        assert_eq!(spec("192.0.2.7"), Ok(s("192.0.2.7", None)));
        assert_eq!(spec("192.0.2.7:9000"), Ok(s("192.0.2.7", Some(9000))));
        assert_eq!(spec("2001:db8::1"), Ok(s("2001:db8::1", None)));
        assert_eq!(spec("[2001:db8::1]"), Ok(s("2001:db8::1", None)));
        assert_eq!(spec("[2001:db8::1]:9000"), Ok(s("2001:db8::1", Some(9000))));
        assert_eq!(spec("host-a.lan"), Ok(s("host-a.lan", None)));
        assert_eq!(spec("host-a.lan:9000"), Ok(s("host-a.lan", Some(9000))));
        for bad in [
            "",
            "a b",
            "host:",
            "host:x",
            "host:70000",
            "[::1",
            "a..b",
            "h/x",
        ] {
            assert!(
                matches!(spec(bad), Err(ReachError::Syntax(_))),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(spec("192.0.2.7:0"), Err(ReachError::PortZero(_))));
        assert!(matches!(spec("host:0"), Err(ReachError::PortZero(_))));
    }

    #[tokio::test]
    async fn resolving_refuses_undiallable_addresses() {
        let r = spec("0.0.0.0").unwrap().resolve().await;
        assert!(matches!(r, Err(ReachError::NotDialable(_))));
        let r = spec("localhost:7000").unwrap().resolve().await.unwrap();
        assert!(r.ip.is_loopback());
        assert_eq!((r.host.as_str(), r.port), ("localhost", Some(7000)));
    }

    #[test]
    fn the_printed_host() {
        let adv = Advertise {
            host: "2001:db8::5".into(),
            ip: "2001:db8::5".parse().unwrap(),
            port: None,
        };
        let any: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        assert_eq!(
            public_host(any, Some(&adv)).as_deref(),
            Some("[2001:db8::5]")
        );
        let lo: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert_eq!(public_host(lo, None), None);
        let specific: SocketAddr = "192.0.2.9:8443".parse().unwrap();
        assert_eq!(public_host(specific, None).as_deref(), Some("192.0.2.9"));
    }

    #[test]
    fn lan_address_skips_what_others_cannot_dial() {
        let ips = |v: &[&str]| {
            v.iter()
                .map(|s| s.parse::<IpAddr>().unwrap())
                .collect::<Vec<_>>()
        };
        let pick = |v: &[&str], dual| lan_address(ips(v).into_iter(), dual);
        assert_eq!(pick(&["127.0.0.1", "::1"], true), None);
        assert_eq!(
            pick(&["127.0.0.1", "169.254.3.3", "fe80::1", "10.0.0.4"], true),
            Some("10.0.0.4".parse().unwrap())
        );
        assert_eq!(
            pick(&["fe80::1", "2001:db8::7", "192.168.1.2"], true),
            Some("192.168.1.2".parse().unwrap())
        );
        assert_eq!(
            pick(&["fe80::1", "2001:db8::7"], true),
            Some("2001:db8::7".parse().unwrap())
        );
        assert_eq!(pick(&["2001:db8::7"], false), None);
    }
}
