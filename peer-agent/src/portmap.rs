//! UPnP-IGD port mapping (`--port-map upnp`): asks the home router to forward a public port to
//! this agent's listening port, so peers behind other NATs can dial it directly instead of
//! punching or going through a relay.
//!
//! Off by default: discovery multicasts on every local interface (239.255.255.250:1900) and a
//! mapping opens a port on the router for as long as the agent runs, which is the user's call
//! to make. The mapping is leased ([`LEASE`]), renewed at half the lease, and removed at stop;
//! a router that reboots or forgets it gets it back at the next renewal.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use igd_next::aio::Gateway;
use igd_next::aio::tokio::{Tokio, search_gateway};
use igd_next::{AddAnyPortError, AddPortError, PortMappingProtocol, SearchOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the router keeps a mapping without renewal.
pub const LEASE: Duration = Duration::from_secs(3600);
/// How long discovery waits for a gateway to answer.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);
const DESCRIPTION: &str = "TorrentGuard";

#[derive(Debug, thiserror::Error)]
pub enum PortMapError {
    #[error("no UPnP-IGD gateway answered within {secs}s: {0}", secs = SEARCH_TIMEOUT.as_secs())]
    NoGateway(#[source] igd_next::SearchError),
    #[error("cannot tell this host's address towards the gateway {gateway}: {source}")]
    LocalAddress {
        gateway: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the gateway refused a mapping to port {port}: {reason}")]
    Refused { port: u16, reason: String },
}

/// A live mapping: `external_port` on the router forwards to `local` on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub external_port: u16,
    /// The router's own public address, when it knows one. A router behind another NAT
    /// (carrier-grade NAT) does not; the tracker's view of our address is what peers get
    /// either way.
    pub external_ip: Option<IpAddr>,
    pub local: SocketAddr,
    pub gateway: SocketAddr,
}

impl std::fmt::Display for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.external_ip {
            Some(ip) => write!(f, "{}", SocketAddr::new(ip, self.external_port)),
            None => write!(f, "port {}", self.external_port),
        }
    }
}

/// Finds the gateway, maps a public port to `listen_port` (the same number if the router
/// allows, else any) and keeps the mapping renewed until `cancel`, then removes it.
pub async fn map_listening_port(
    listen_port: u16,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> Result<Mapped, PortMapError> {
    let mut options = SearchOptions::default();
    options.timeout = Some(SEARCH_TIMEOUT);
    options.single_search_timeout = Some(SEARCH_TIMEOUT);
    let gateway = search_gateway(options)
        .await
        .map_err(PortMapError::NoGateway)?;
    let local_ip = local_ip_towards(gateway.addr).map_err(|source| PortMapError::LocalAddress {
        gateway: gateway.addr,
        source,
    })?;
    let local = SocketAddr::new(local_ip, listen_port);
    let external_ip = match gateway.get_external_ip().await {
        Ok(ip) => Some(ip),
        Err(e) => {
            tracing::debug!(error = %first_line(&e.to_string()), "the gateway gave no external address");
            None
        }
    };
    let external_port = add_mapping(&gateway, local).await?;
    let mapped = Mapped {
        external_port,
        external_ip,
        local,
        gateway: gateway.addr,
    };
    tasks.spawn(keep_mapped(gateway, mapped, cancel));
    Ok(mapped)
}

/// The same external port as the local one if the router allows it (peers then see the port
/// the agent announces), else any port it picks.
async fn add_mapping(gateway: &Gateway<Tokio>, local: SocketAddr) -> Result<u16, PortMapError> {
    let lease = LEASE.as_secs() as u32;
    let tcp = PortMappingProtocol::TCP;
    match gateway
        .add_port(tcp, local.port(), local, lease, DESCRIPTION)
        .await
    {
        Ok(()) => return Ok(local.port()),
        Err(AddPortError::PortInUse | AddPortError::ExternalPortZeroInvalid) => {}
        Err(e) => tracing::debug!(error = %e, "the same external port was refused; asking for any"),
    }
    gateway
        .add_any_port(tcp, local, lease, DESCRIPTION)
        .await
        .map_err(|e: AddAnyPortError| PortMapError::Refused {
            port: local.port(),
            reason: first_line(&e.to_string()).to_string(),
        })
}

/// Renews the lease at half its length; removes the mapping when the agent stops.
async fn keep_mapped(gateway: Gateway<Tokio>, mapped: Mapped, cancel: CancellationToken) {
    let lease = LEASE.as_secs() as u32;
    let port = mapped.external_port;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LEASE / 2) => {}
            _ = cancel.cancelled() => break,
        }
        let renewed = gateway
            .add_port(
                PortMappingProtocol::TCP,
                port,
                mapped.local,
                lease,
                DESCRIPTION,
            )
            .await;
        match renewed {
            Ok(()) => tracing::debug!(external = %mapped, "UPnP mapping renewed"),
            Err(e) => tracing::warn!(external = %mapped, error = %e,
                "the router refused to renew the UPnP mapping; peers may not reach this agent directly"),
        }
    }
    // Within the agent's stop budget: a router on the LAN answers in milliseconds.
    let removed = tokio::time::timeout(
        Duration::from_secs(1),
        gateway.remove_port(PortMappingProtocol::TCP, port),
    )
    .await;
    match removed {
        Ok(Ok(())) => tracing::info!(external = %mapped, "UPnP mapping removed"),
        Ok(Err(e)) => {
            tracing::warn!(external = %mapped, error = %e, "UPnP mapping not removed")
        }
        Err(_) => {
            tracing::warn!(external = %mapped, "UPnP mapping not removed: the router did not answer")
        }
    }
}

/// Gateways answer errors with whole SOAP bodies; the first line says enough.
fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// The address this host uses to reach `gateway`: the one the router must forward to. A UDP
/// `connect` only picks the route; nothing is sent.
fn local_ip_towards(gateway: SocketAddr) -> std::io::Result<IpAddr> {
    let unspecified: SocketAddr = match gateway {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(unspecified)?;
    socket.connect(gateway)?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_address_towards_a_loopback_gateway_is_loopback() {
        let ip = local_ip_towards("127.0.0.1:5000".parse().unwrap()).unwrap();
        assert!(ip.is_loopback(), "{ip}");
    }
}
