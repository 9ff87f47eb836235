//! End-to-end tests of issue 12 §4 with the real binaries on ephemeral loopback ports: a
//! compressible file sent with compression forced on (`TORRENTGUARD_COMPRESSION=always`, the
//! test and bench knob) arrives byte-identical in fewer bytes on the wire than it has, and a
//! `get --compression off` gets no compressed chunk from the same seeder.

mod common;

use anyhow::{Result, anyhow, ensure};

use common::*;

/// JSON-log-like lines, each distinct (no two chunks alike, so every chunk is fetched).
fn write_logs(path: &std::path::Path, size: usize) -> Result<Vec<u8>> {
    let mut data = Vec::with_capacity(size + 100);
    let mut i = 0u64;
    while data.len() < size {
        let line = format!(
            "{{\"seq\":{i},\"level\":\"info\",\"path\":\"/v1/items/{}\",\"ms\":{}}}\n",
            i * 7919 % 100_003,
            i * 13 % 997
        );
        data.extend_from_slice(line.as_bytes());
        i += 1;
    }
    data.truncate(size);
    std::fs::write(path, &data)?;
    Ok(data)
}

#[test]
fn forced_compression_transfers_identical_bytes_in_less_and_off_sends_none() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("tg-zstd-").tempdir()?;
    let root = dir.path();
    let tracker = Tracker::start(&root.join("tracker"))?;
    let file = root.join("logs.json");
    let size = 40 * CHUNK_BYTES as usize - 123;
    let data = write_logs(&file, size)?;
    let chunks = (size as u64).div_ceil(CHUNK_BYTES);

    let mut cmd = agent(&root.join("seeder"));
    cmd.env("TORRENTGUARD_COMPRESSION", "always")
        .arg("share")
        .arg(&file)
        .args(tracker.args())
        .args(["--listen", "127.0.0.1:0", "--chunk-size", CHUNK]);
    let mut seeder = Proc::spawn("seeder", cmd)?;
    let seeding = seeder.wait_event("seeding", |_| true)?;
    let id = seeding["file_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no file_id: {seeding}"))?
        .to_string();

    for (name, extra, compressed) in [
        ("auto", &[][..], true),
        ("off", &["--compression", "off"][..], false),
    ] {
        let out = root.join(format!("out-{name}"));
        let mut g = get(name, &root.join(name), &id, &out, &tracker, extra)?;
        let done = g.wait_event("completed", |_| true)?;
        g.expect_exit(0)?;
        assert_same(&out.join("logs.json"), &data)?;
        let on_wire = num(&done, "bytes_on_wire");
        let zchunks = num(&done, "chunks_compressed");
        ensure!(num(&done, "bytes_fetched") == size as u64, "{done}");
        if compressed {
            ensure!(zchunks == chunks, "{name}: {done}");
            ensure!(on_wire < size as u64 / 2, "{name}: {done}");
        } else {
            ensure!(zchunks == 0, "{name}: {done}");
            ensure!(on_wire == size as u64 + chunks * 9, "{name}: {done}");
        }
    }
    seeder.kill()?;
    Ok(())
}
