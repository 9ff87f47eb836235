//! The simulated fleet: the files, each peer's identity, source address, port and files.

use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::Context as _;
use torrentguard_protocol::{FileId, HashAlgo, Manifest};
use torrentguard_trust::Identity;

/// Chunk size of every simulated file (the agent's default).
pub const CHUNK_SIZE: u32 = 256 * 1024;

/// File `index`'s manifest: `chunks` chunks whose digests derive from the index, so every run
/// registers the same files (and opentracker's whitelist can list them without a tracker).
pub fn manifest(index: usize, chunks: u32) -> Manifest {
    let digest =
        |what: &str, i: u64| HashAlgo::Sha256.digest(format!("{what}/{index}/{i}").as_bytes());
    Manifest::single(
        format!("bench-{index:06}.bin"),
        u64::from(chunks) * u64::from(CHUNK_SIZE),
        CHUNK_SIZE,
        HashAlgo::Sha256,
        (0..u64::from(chunks)).map(|i| digest("chunk", i)).collect(),
        digest("file", 0),
    )
}

pub fn file_ids(files: usize, chunks: u32) -> Vec<FileId> {
    (0..files).map(|i| manifest(i, chunks).file_id()).collect()
}

/// Peer `i`'s source address: its own in 127.0.0.0/8 (all of which is loopback on Linux), so
/// the tracker's per-address bounds see 10 000 hosts, not one, as they would in a real swarm.
pub fn source_address(i: usize) -> Ipv4Addr {
    let i = i as u32;
    // 127.1.0.1 onwards, skipping .0 and .255 in the last octet.
    let host = 1 + i % 254;
    let mid = (i / 254) % 256;
    let high = 1 + i / (254 * 256);
    Ipv4Addr::new(127, high as u8, mid as u8, host as u8)
}

/// The files peer `i` shares or fetches: consecutive in a rotation, so every file gets
/// `peers × per_peer / files` peers (±1).
pub fn peer_files(i: usize, per_peer: usize, files: usize) -> Vec<usize> {
    (0..per_peer).map(|j| (i * per_peer + j) % files).collect()
}

/// Generates `n` identities (ECDSA P-256, as agents make), on every core.
pub fn identities(n: usize) -> anyhow::Result<Vec<Arc<Identity>>> {
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    let per = n.div_ceil(threads).max(1);
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(per)
            .map(|start| {
                s.spawn(move || {
                    (start..(start + per).min(n))
                        .map(|i| Identity::generate(&format!("bench-peer-{i}")).map(Arc::new))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("identity thread panicked"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut all = Vec::with_capacity(n);
    for part in parts {
        all.extend(part.context("generating a peer identity")?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn source_addresses_are_distinct_and_loopback() {
        let all: HashSet<_> = (0..70_000).map(source_address).collect();
        assert_eq!(all.len(), 70_000);
        assert!(
            all.iter()
                .all(|a| a.is_loopback() && a.octets()[3] != 0 && a.octets()[3] != 255)
        );
    }

    #[test]
    fn files_are_spread_evenly_over_the_peers() {
        let mut per_file = vec![0u32; 1_000];
        for peer in 0..10_000 {
            let files = peer_files(peer, 2, 1_000);
            assert_eq!(files.len(), 2);
            assert_ne!(files[0], files[1]);
            for f in files {
                per_file[f] += 1;
            }
        }
        assert!(per_file.iter().all(|&n| n == 20), "{per_file:?}");
    }

    #[test]
    fn manifests_are_valid_distinct_and_stable() {
        let ids = file_ids(50, 64);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 50);
        assert_eq!(ids, file_ids(50, 64));
        manifest(3, 64).validate().unwrap();
    }

    #[test]
    fn identities_are_distinct() {
        let ids = identities(5).unwrap();
        let fps: HashSet<_> = ids.iter().map(|i| i.fingerprint).collect();
        assert_eq!(fps.len(), 5);
    }
}
