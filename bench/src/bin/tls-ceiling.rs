//! `tls-ceiling`: the ceiling for one verified TorrentGuard transfer on this machine.
//!
//! Two processes on loopback, a bare rustls TLS 1.3 stream (aws-lc-rs provider, its default key
//! exchange order, so X25519MLKEM768 first) that moves a file as 256 KiB chunks, each behind the
//! same 9-byte header as the wire protocol's `Chunk` frame. The receiver reads each chunk into one
//! reused buffer, SHA-256-hashes it with the protocol crate's hasher and writes it with a
//! positional write: the least work any secure, verified transfer has to do. `--no-hash` and
//! `--no-write` take those steps away to show the bare stream; `--pipeline` moves hashing and
//! writing to a second thread so they overlap with decryption.
//!
//! ```text
//! tls-ceiling send --listen 127.0.0.1:0 --file F      # prints "listening ADDR fingerprint FP"
//! tls-ceiling recv --connect ADDR --fingerprint FP --out F [--no-hash] [--no-write] [--pipeline]
//! ```
//!
//! Each side runs on a single-threaded tokio runtime: one core per process, as in the real
//! one-to-one transfer where both ends share this machine's cores.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use torrentguard_protocol::wire::{CHUNK_HEADER_LEN, chunk_header, ty};
use torrentguard_protocol::{Fingerprint, HashAlgo};
use torrentguard_trust::config::provider;
use torrentguard_trust::{Identity, Pin, PinnedServerCert};

#[derive(Parser)]
#[command(about = "Bare rustls TLS 1.3 loopback stream: the ceiling for one verified transfer")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Accept one connection and send FILE as Chunk frames, then close.
    Send {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        file: PathBuf,
        /// Chunk size in bytes.
        #[arg(long, default_value_t = 262_144)]
        chunk_size: u32,
    },
    /// Connect, receive every chunk, hash and write it, print JSON figures.
    Recv {
        #[arg(long)]
        connect: SocketAddr,
        /// The sender's certificate fingerprint (`sha256:HEX`), pinned like a peer's.
        #[arg(long)]
        fingerprint: Fingerprint,
        /// Output file (written with positional writes, fsynced at the end).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Do not hash the chunks.
        #[arg(long)]
        no_hash: bool,
        /// Do not write the chunks.
        #[arg(long)]
        no_write: bool,
        /// Largest chunk accepted.
        #[arg(long, default_value_t = 262_144)]
        chunk_size: u32,
        /// Hash and write on a second thread, fed from a pool of 4 chunk buffers, while this one
        /// decrypts the next chunks (as an agent that hashes off its reactor can).
        #[arg(long)]
        pipeline: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.cmd {
        Cmd::Send {
            listen,
            file,
            chunk_size,
        } => rt.block_on(send(listen, file, chunk_size)),
        Cmd::Recv {
            connect,
            fingerprint,
            out,
            no_hash,
            no_write,
            chunk_size,
            pipeline,
        } => {
            let out = if no_write {
                None
            } else {
                Some(out.context("--out is required unless --no-write")?)
            };
            let work = Work {
                hash: !no_hash,
                out,
                chunk_size: chunk_size as usize,
            };
            rt.block_on(recv(connect, fingerprint, work, pipeline))
        }
    }
}

async fn send(listen: SocketAddr, path: PathBuf, chunk_size: u32) -> anyhow::Result<()> {
    let id = Identity::generate("tls-ceiling").context("generating the certificate")?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![id.cert.clone()], id.key.clone_key())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();

    let listener = TcpListener::bind(listen).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "listening {} fingerprint {}",
        listener.local_addr()?,
        id.fingerprint
    )?;
    stdout.flush()?;
    drop(stdout);

    let (tcp, _) = listener.accept().await?;
    tcp.set_nodelay(true)?;
    let mut tls = acceptor.accept(tcp).await?;

    // One buffer, header in front of the data so each chunk goes to rustls in one write and
    // fills whole TLS records.
    let cs = chunk_size as usize;
    let mut buf = vec![0u8; CHUNK_HEADER_LEN + cs];
    let mut offset = 0u64;
    let mut index = 0u32;
    while offset < size {
        let len = ((size - offset) as usize).min(cs);
        file.read_exact_at(&mut buf[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + len], offset)?;
        buf[..CHUNK_HEADER_LEN].copy_from_slice(&chunk_header(index, len as u32));
        tls.write_all(&buf[..CHUNK_HEADER_LEN + len]).await?;
        offset += len as u64;
        index += 1;
    }
    tls.shutdown().await?;
    Ok(())
}

/// What the receiver does with each chunk.
struct Work {
    hash: bool,
    out: Option<PathBuf>,
    chunk_size: usize,
}

/// Hashes and writes chunks; `check` folds digest bytes so the hashing shows in the output.
struct Sink {
    hash: bool,
    out: Option<File>,
    chunk_size: u64,
    check: u8,
}

impl Sink {
    fn take(&mut self, index: u32, data: &[u8]) -> std::io::Result<()> {
        if self.hash {
            self.check ^= HashAlgo::Sha256.digest(data).as_bytes()[0];
        }
        if let Some(f) = &self.out {
            f.write_all_at(data, index as u64 * self.chunk_size)?;
        }
        Ok(())
    }
}

const PIPELINE_BUFFERS: usize = 4;

async fn recv(
    addr: SocketAddr,
    pinned: Fingerprint,
    work: Work,
    pipeline: bool,
) -> anyhow::Result<()> {
    let provider = provider();
    let verifier = Arc::new(PinnedServerCert::new(Pin::Exact(pinned), &provider));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let out = match &work.out {
        Some(p) => Some(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .with_context(|| format!("creating {}", p.display()))?,
        ),
        None => None,
    };
    let write = out.is_some();
    let cs = work.chunk_size;
    let mut sink = Sink {
        hash: work.hash,
        out,
        chunk_size: cs as u64,
        check: 0,
    };

    let start = Instant::now();
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector
        .connect(rustls::pki_types::ServerName::try_from("tls-ceiling")?, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let group = conn
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_default();
    let handshake_secs = start.elapsed().as_secs_f64();

    // Pipelined: full buffers go to a worker thread, empty ones come back.
    let (to_worker, from_reader) = mpsc::sync_channel::<(Vec<u8>, usize, u32)>(PIPELINE_BUFFERS);
    let (give_back, returned) = mpsc::channel::<Vec<u8>>();
    let worker = if pipeline {
        let mut worker_sink = std::mem::replace(
            &mut sink,
            Sink {
                hash: false,
                out: None,
                chunk_size: 0,
                check: 0,
            },
        );
        Some(std::thread::spawn(move || -> std::io::Result<Sink> {
            for (buf, len, index) in from_reader {
                worker_sink.take(index, &buf[..len])?;
                let _ = give_back.send(buf);
            }
            Ok(worker_sink)
        }))
    } else {
        drop(from_reader);
        None
    };
    let mut allocated = 1usize;
    let mut buf = vec![0u8; cs];
    let mut header = [0u8; CHUNK_HEADER_LEN];
    let mut bytes = 0u64;
    let mut chunks = 0u64;
    loop {
        match tls.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let frame_len = u32::from_be_bytes(header[..4].try_into()?) as usize;
        ensure!(
            header[4] == ty::CHUNK,
            "not a Chunk frame: type {}",
            header[4]
        );
        ensure!(
            (5..=cs + 5).contains(&frame_len),
            "chunk frame of {frame_len} bytes"
        );
        let index = u32::from_be_bytes(header[5..9].try_into()?);
        let len = frame_len - 5;
        tls.read_exact(&mut buf[..len]).await?;
        if worker.is_some() {
            // Blocking hand-over on this single-threaded runtime is the back-pressure: while
            // the worker is behind, the socket is not read.
            let next = if allocated < PIPELINE_BUFFERS {
                allocated += 1;
                vec![0u8; cs]
            } else {
                returned.recv().context("worker stopped")?
            };
            let full = std::mem::replace(&mut buf, next);
            to_worker
                .send((full, len, index))
                .context("worker stopped")?;
        } else {
            sink.take(index, &buf[..len])?;
        }
        bytes += len as u64;
        chunks += 1;
    }
    drop(to_worker);
    if let Some(w) = worker {
        sink = w.join().expect("worker panicked")?;
    }
    if let Some(f) = &sink.out {
        f.sync_all()?;
    }
    let secs = start.elapsed().as_secs_f64();
    if bytes == 0 {
        bail!("received nothing");
    }
    let result = serde_json::json!({
        "bytes": bytes,
        "chunks": chunks,
        "secs": secs,
        "mb_per_s": bytes as f64 / 1e6 / secs,
        "handshake_secs": handshake_secs,
        "hash": sink.hash,
        "write": write,
        "pipeline": pipeline,
        "suite": suite,
        "kx_group": group,
        "check": sink.check,
    });
    println!("{result}");
    Ok(())
}
