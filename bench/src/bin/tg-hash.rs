//! `tg-hash FILE [--chunk-size N] [--hash sha256|sha1]`: runs the protocol crate's streaming
//! hasher (`hash_stream`, the one `share` uses) over a file and prints one JSON line:
//! `{"bytes", "secs", "mb_per_s", "file_hash", "chunks", "chunk_size", "hash"}`.
//!
//! MB/s is decimal (10^6 bytes per second), as `openssl speed` and `dd` report it.

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use torrentguard_protocol::HashAlgo;
use torrentguard_protocol::hashing::hash_stream;

#[derive(Parser)]
#[command(about = "Time TorrentGuard's one-pass streaming hasher on a file")]
struct Args {
    /// File to hash (put it in tmpfs, e.g. /dev/shm, to measure hashing rather than the disk).
    file: PathBuf,
    /// Chunk size in bytes (power of two, 16 KiB to 16 MiB).
    #[arg(long, default_value_t = 262_144)]
    chunk_size: u32,
    /// Hash algorithm.
    #[arg(long = "hash", default_value = "sha256")]
    algo: HashAlgo,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file =
        File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let start = Instant::now();
    let d = hash_stream(file, args.chunk_size, args.algo, |_| {})
        .with_context(|| format!("hashing {}", args.file.display()))?;
    let secs = start.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "bytes": d.size,
        "secs": secs,
        "mb_per_s": d.size as f64 / 1e6 / secs,
        "file_hash": d.file_hash.to_string(),
        "chunks": d.chunks.len(),
        "chunk_size": args.chunk_size,
        "hash": args.algo.as_str(),
    });
    println!("{out}");
    Ok(())
}
