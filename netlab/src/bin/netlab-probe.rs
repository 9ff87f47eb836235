//! `netlab-probe`: checks the NAT lab itself with plain TCP, one line of output per fact.
//!
//! - `listen PORT`: prints `listening ADDR`, then `accepted PEER` for every connection;
//! - `connect ADDR [--from PORT]`: prints `connected LOCAL` (exit 0) or `failed ERROR` (exit 1);
//! - `punch --from PORT --to ADDR --at UNIX_MS`: a TCP simultaneous open started at the agreed
//!   instant; after the handshake each side sends one byte and reads the other's; prints
//!   `ok LOCAL PEER` (exit 0) or `failed ERROR` (exit 1).
//!
//! Sockets bind with SO_REUSEADDR and SO_REUSEPORT, as the agent binds its punch sockets, so a
//! listener and outgoing connections can share a port.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Parser)]
#[command(about = "Checks the NAT lab with plain TCP connections")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Accept connections on 0.0.0.0:PORT, printing each peer's address.
    Listen { port: u16 },
    /// Connect to ADDR, printing the local address or the error.
    Connect {
        addr: SocketAddr,
        /// Local port to connect from.
        #[arg(long, default_value_t = 0)]
        from: u16,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// TCP simultaneous open from local port FROM to ADDR at the instant AT (Unix ms).
    Punch {
        #[arg(long)]
        from: u16,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        at: u64,
        #[arg(long, default_value_t = 4000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Cmd::Listen { port } => listen(port),
        Cmd::Connect {
            addr,
            from,
            timeout_ms,
        } => connect(addr, from, Duration::from_millis(timeout_ms))
            .map(|s| format!("connected {}", local(&s))),
        Cmd::Punch {
            from,
            to,
            at,
            timeout_ms,
        } => punch(from, to, at, Duration::from_millis(timeout_ms)),
    };
    match outcome {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("failed {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A TCP socket bound to 0.0.0.0:`port` with address and port reuse.
fn bound(port: u16) -> Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket)
}

fn local(stream: &TcpStream) -> String {
    stream
        .local_addr()
        .map_or_else(|e| format!("?({e})"), |a| a.to_string())
}

/// Runs until killed; returns only on an error.
fn listen(port: u16) -> Result<String> {
    let socket = bound(port)?;
    socket.listen(128)?;
    let listener: std::net::TcpListener = socket.into();
    println!("listening {}", listener.local_addr()?);
    loop {
        let (_stream, peer) = listener.accept().context("accept")?;
        println!("accepted {peer}");
    }
}

fn connect(addr: SocketAddr, from: u16, timeout: Duration) -> Result<TcpStream> {
    let socket = bound(from)?;
    socket
        .connect_timeout(&addr.into(), timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(socket.into())
}

fn punch(from: u16, to: SocketAddr, at: u64, timeout: Duration) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    // The agreed start instant is the protocol of a simultaneous open: both sides' SYNs must
    // cross, so each waits for the same moment rather than for the other.
    std::thread::sleep(Duration::from_millis(at).saturating_sub(now));
    let mut stream = connect(to, from, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"p").context("sending a byte")?;
    let mut byte = [0u8; 1];
    stream
        .read_exact(&mut byte)
        .context("reading the other side's byte")?;
    Ok(format!("ok {} {}", local(&stream), stream.peer_addr()?))
}
