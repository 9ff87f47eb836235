//! zstd compression of chunks on the wire, and the per-connection decision whether it pays.
//!
//! Both sides set [`caps::ZSTD`] in their `Hello`; only then may a seeder send a chunk as a
//! `ChunkZstd` frame: its index, then one zstd frame whose header states the chunk's length.
//!
//! The receiver ([`decompress_chunk`]) checks that header before any output buffer exists and
//! decodes into a slice of exactly the chunk's length: a frame that claims more, states no
//! size, or decodes to more or less than it claims is refused, so a decompression bomb can never
//! make it allocate or write past one chunk. The digest of the decompressed bytes is then
//! checked as for any chunk.
//!
//! The sender ([`Governor`]) compresses only when it pays. Sending `n` raw bytes over a link that
//! drains `L` bytes/s takes `n/L`; compressing them at `c` bytes/s to `r·n` bytes takes
//! `n/c + r·n/L`. Compression wins when `c·(1−r) > L`: the link, not the compressor, is the
//! bottleneck; it is turned on only with a margin, `c·(1−r) > 2·L` ([`HEADROOM`]), for the
//! receiver's work that the sender cannot see. `r` and `c` are measured on the chunks it compresses (all of them while it pays,
//! every [`PROBE_EVERY`]th otherwise, so a change of data turns it back on), `L` on every chunk
//! written. A ratio above [`MAX_RATIO`] never pays enough to be worth the receiver's work.

use std::cell::RefCell;
use std::time::Duration;

/// Capability bits of the `Hello`.
pub mod caps {
    /// The peer decodes (as a downloader) or may send (as a seeder) `ChunkZstd` frames.
    pub const ZSTD: u8 = 0x01;
}

/// zstd level for chunks. Measured on 256 KiB chunks, one core of the development machine:
/// JSON logs at level 1 compress at 570 MB/s to 0.11, at -1 at 644 MB/s to 0.14, at -5 at
/// 774 MB/s to 0.20; random data passes at 5 GB/s. On the links where compression turns on
/// (≤ 1 Gbit/s) the saving is what counts, and level 1 saves the most for little speed.
pub const LEVEL: i32 = 1;
/// Compressed size over raw size above which a chunk is sent raw whatever the link.
pub const MAX_RATIO: f64 = 0.9;
/// How much faster than the link compression must save bytes: `c·(1−r) > HEADROOM·L`. The
/// seeder measures only its own compressor; the receiver also decodes (at level 1 about a third
/// of the compressor's time), and a drain rate measured from write times also falls when the
/// receiver, not the link, is busy (hashing, decrypting), where compression adds work instead of
/// saving it. Measured on loopback with text: with no headroom it turned on for up to 90 % of
/// the chunks on a loaded 2-core machine and cost 10–20 %; a 1 Gbit/s link (125 MB/s) stays
/// well inside the margin for text (c·(1−r) ≈ 500 MB/s).
pub const HEADROOM: f64 = 2.0;
/// While compression does not pay, every this many chunks one is compressed anyway, to
/// re-measure the ratio and the compressor's speed.
pub const PROBE_EVERY: u32 = 32;
/// Weight of the newest sample in the running averages.
const ALPHA: f64 = 0.25;

/// Whether a connection may compress, as the user chose it (`--compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Neither advertised nor sent.
    Off,
    /// Advertised; chunks compressed when [`compression_pays`].
    #[default]
    Auto,
    /// Advertised; every chunk compressed (a test and bench knob: forces the decision).
    Always,
}

impl Mode {
    /// The capability bits a `Hello` of ours carries in this mode.
    pub fn capabilities(self) -> u8 {
        match self {
            Mode::Off => 0,
            Mode::Auto | Mode::Always => caps::ZSTD,
        }
    }
}

/// Whether compressing pays: the chunk shrinks to `ratio` of its size (below [`MAX_RATIO`]),
/// and the compressor, at `compress_bps` bytes of input per second, saves link time clearly
/// faster than the link drains raw bytes (`drain_bps`): `c·(1−r) > HEADROOM·L`.
pub fn compression_pays(ratio: f64, compress_bps: f64, drain_bps: f64) -> bool {
    ratio < MAX_RATIO && compress_bps * (1.0 - ratio) > HEADROOM * drain_bps
}

/// A running average; `None` until the first sample.
#[derive(Debug, Clone, Copy, Default)]
struct Ewma(Option<f64>);

impl Ewma {
    fn add(&mut self, x: f64) {
        self.0 = Some(self.0.map_or(x, |m| m + ALPHA * (x - m)));
    }
}

/// One connection's view of whether compressing its chunks pays (see the module docs).
#[derive(Debug, Clone)]
pub struct Governor {
    mode: Mode,
    ratio: Ewma,
    /// Bytes of input per second of compression.
    speed: Ewma,
    /// Bytes and seconds of recent writes, averaged separately so that many quick writes into
    /// an empty socket buffer do not outweigh the slow ones that show the link's rate.
    drain_bytes: Ewma,
    drain_secs: Ewma,
    since_probe: u32,
}

impl Governor {
    /// A governor for a connection that negotiated zstd in `mode`; pass [`Mode::Off`] when it
    /// did not.
    pub fn new(mode: Mode) -> Self {
        Governor {
            mode,
            ratio: Ewma::default(),
            speed: Ewma::default(),
            drain_bytes: Ewma::default(),
            drain_secs: Ewma::default(),
            since_probe: 0,
        }
    }

    /// Whether to compress the next chunk. Counts it: call once per chunk sent.
    ///
    /// While compression pays, every [`PROBE_EVERY`]th chunk still goes raw: only raw writes
    /// measure `L` (compressed ones may leave the link idle, so their quick writes say nothing
    /// about how fast it drains), and a link that got faster must be seen.
    pub fn should_compress(&mut self) -> bool {
        let decision = self.would_compress();
        if self.mode == Mode::Auto {
            self.since_probe += 1;
            if self.since_probe >= PROBE_EVERY {
                self.since_probe = 0;
            }
        }
        decision
    }

    /// What the next [`Governor::should_compress`] will answer, without counting a chunk.
    pub fn would_compress(&self) -> bool {
        match self.mode {
            Mode::Off => false,
            Mode::Always => true,
            Mode::Auto => {
                // The next chunk is a probe when it is the PROBE_EVERY-th since the last one.
                let due = self.since_probe + 1 >= PROBE_EVERY;
                match (self.ratio.0.is_none(), self.pays()) {
                    // Nothing measured yet: the first chunk is the first probe.
                    (true, _) => true,
                    (false, true) => !due,
                    (false, false) => due,
                }
            }
        }
    }

    /// Whether compression pays by what was measured so far (false until all three are).
    pub fn pays(&self) -> bool {
        match (self.ratio.0, self.speed.0, self.drain_bps()) {
            (Some(r), Some(c), Some(l)) => compression_pays(r, c, l),
            _ => false,
        }
    }

    /// A chunk of `raw` bytes was compressed in `took`, to `compressed` bytes (`None`: it did
    /// not fit in `raw` bytes, i.e. it did not shrink).
    pub fn record_compression(&mut self, raw: usize, compressed: Option<usize>, took: Duration) {
        if raw == 0 {
            return;
        }
        let r = compressed.map_or(1.0, |c| (c as f64 / raw as f64).min(1.0));
        self.ratio.add(r);
        // A clock too coarse to see the work says nothing about the speed.
        if !took.is_zero() {
            self.speed.add(raw as f64 / took.as_secs_f64());
        }
    }

    /// `bytes` went onto the connection in `took` (write and flush); `compressed`: they were
    /// a compressed chunk, which does not measure the link (see [`Governor::should_compress`]).
    ///
    /// A raw probe sent while compression pays does not measure it either when the compressor
    /// feeds the link less than it drains (`c·r < L`): the socket's send buffer has emptied,
    /// so the probe's write returns at once whatever the link's rate. Counting it would read
    /// as a fast link, turn compression off, and on again once raw writes filled the buffer:
    /// on a 1 Gbit/s link with text that oscillation halved the gain.
    pub fn record_write(&mut self, bytes: usize, took: Duration, compressed: bool) {
        if compressed {
            return;
        }
        if let (true, Some(r), Some(c), Some(l)) =
            (self.pays(), self.ratio.0, self.speed.0, self.drain_bps())
            && c * r < l
        {
            return;
        }
        self.drain_bytes.add(bytes as f64);
        // Never zero: an instant write still means a fast link.
        self.drain_secs.add(took.as_secs_f64().max(1e-9));
    }

    /// The link's measured drain rate, bytes per second.
    pub fn drain_bps(&self) -> Option<f64> {
        Some(self.drain_bytes.0? / self.drain_secs.0?)
    }

    /// The measured compressed-to-raw ratio.
    pub fn ratio(&self) -> Option<f64> {
        self.ratio.0
    }
}

/// Why a `ChunkZstd` body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecompressError {
    #[error("not a zstd frame")]
    NotAFrame,
    #[error("the zstd frame does not state its decompressed size")]
    NoContentSize,
    #[error("the zstd frame claims {claimed} bytes; the chunk has {expected}")]
    WrongSize { claimed: u64, expected: usize },
    #[error("bytes after the zstd frame")]
    TrailingBytes,
    #[error("the zstd frame does not decode to the {expected} bytes it claims: {reason}")]
    Corrupt {
        expected: usize,
        reason: &'static str,
    },
}

/// Checks a `ChunkZstd` body against the chunk's `expected` length from its frame header
/// alone: one frame, stating exactly that size. Nothing is allocated.
pub fn check_frame(src: &[u8], expected: usize) -> Result<(), DecompressError> {
    let claimed = match zstd::zstd_safe::get_frame_content_size(src) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(DecompressError::NoContentSize),
        Err(_) => return Err(DecompressError::NotAFrame),
    };
    if claimed != expected as u64 {
        return Err(DecompressError::WrongSize { claimed, expected });
    }
    match zstd::zstd_safe::find_frame_compressed_size(src) {
        Ok(n) if n == src.len() => Ok(()),
        Ok(_) => Err(DecompressError::TrailingBytes),
        Err(code) => Err(DecompressError::Corrupt {
            expected,
            reason: zstd::zstd_safe::get_error_name(code),
        }),
    }
}

thread_local! {
    // One context per thread (the blocking pool's), reused: creating one costs more than
    // decoding a small chunk. `None` if zstd could not allocate it.
    static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        RefCell::new(zstd::bulk::Decompressor::new().ok());
    static CCTX: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        RefCell::new(zstd::bulk::Compressor::new(LEVEL).ok());
}

/// Decodes a `ChunkZstd` body into `out`, whose length is the chunk's: checked first with
/// [`check_frame`], then decoded into `out` and nowhere else, and refused unless it fills `out`
/// exactly.
pub fn decompress_chunk(src: &[u8], out: &mut [u8]) -> Result<(), DecompressError> {
    let expected = out.len();
    check_frame(src, expected)?;
    let corrupt = |reason| DecompressError::Corrupt { expected, reason };
    DCTX.with_borrow_mut(|d| {
        let d = d.as_mut().ok_or(corrupt("no zstd context"))?;
        match d.decompress_to_buffer(src, out) {
            Ok(n) if n == expected => Ok(()),
            Ok(_) => Err(corrupt("short output")),
            Err(_) => Err(corrupt("undecodable or longer than claimed")),
        }
    })
}

/// Compresses `src` into `dst` at [`LEVEL`]; `None` if the result does not fit (compression
/// would not shrink the chunk by the headroom `dst` leaves) or zstd fails.
pub fn compress_chunk(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    CCTX.with_borrow_mut(|c| c.as_mut()?.compress_to_buffer(src, dst).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 200);
        let mut i = 0u64;
        while v.len() < n {
            v.extend_from_slice(
                format!(
                    r#"{{"ts":{},"level":"info","msg":"request served","id":{}}}"#,
                    1_700_000_000 + i,
                    i * 7919 % 10007
                )
                .as_bytes(),
            );
            v.push(b'\n');
            i += 1;
        }
        v.truncate(n);
        v
    }

    /// Not cryptographic, just incompressible.
    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn compressed(src: &[u8]) -> Vec<u8> {
        let mut dst = vec![0; src.len()];
        let n = compress_chunk(src, &mut dst).expect("text compresses");
        dst.truncate(n);
        dst
    }

    #[test]
    fn a_chunk_round_trips() {
        let src = text(64 * 1024);
        let z = compressed(&src);
        assert!(z.len() < src.len() / 3, "{}", z.len());
        let mut out = vec![0; src.len()];
        decompress_chunk(&z, &mut out).unwrap();
        assert_eq!(out, src);
    }

    #[test]
    fn incompressible_data_does_not_fit_its_own_length() {
        let src = noise(64 * 1024);
        assert_eq!(compress_chunk(&src, &mut vec![0; src.len()]), None);
    }

    /// A frame header claiming `content` bytes (single segment, 8-byte size), then `blocks`.
    fn frame_claiming(content: u64, blocks: &[u8]) -> Vec<u8> {
        let mut f = 0xFD2F_B528u32.to_le_bytes().to_vec();
        f.push(0b1110_0000);
        f.extend_from_slice(&content.to_le_bytes());
        f.extend_from_slice(blocks);
        f
    }

    /// Last-block flag, type RLE, `size` bytes of `byte`.
    fn rle_block(last: bool, size: u32, byte: u8) -> Vec<u8> {
        let h = (size << 3) | (1 << 1) | u32::from(last);
        let mut b = h.to_le_bytes()[..3].to_vec();
        b.push(byte);
        b
    }

    #[test]
    fn a_bomb_claiming_4_gib_is_refused_from_its_header() {
        let bomb = frame_claiming(4 << 30, &rle_block(true, 100_000, 0));
        assert_eq!(
            check_frame(&bomb, 65536),
            Err(DecompressError::WrongSize {
                claimed: 4 << 30,
                expected: 65536
            })
        );
        let mut out = [0u8; 16];
        assert!(matches!(
            decompress_chunk(&bomb, &mut out),
            Err(DecompressError::WrongSize { .. })
        ));
    }

    #[test]
    fn a_frame_whose_size_lies_never_writes_past_the_chunk() {
        let expected = 65536usize;
        // Claims the chunk's length, decodes to three times it.
        let mut blocks = rle_block(false, 65536, 7);
        blocks.extend(rle_block(false, 65536, 7));
        blocks.extend(rle_block(true, 65536, 7));
        let liar = frame_claiming(expected as u64, &blocks);
        check_frame(&liar, expected).unwrap();
        // Room past the chunk, to show nothing is written there.
        let mut buf = vec![0xAAu8; expected * 2];
        let r = decompress_chunk(&liar, &mut buf[..expected]);
        assert!(matches!(r, Err(DecompressError::Corrupt { .. })), "{r:?}");
        assert!(buf[expected..].iter().all(|b| *b == 0xAA));
        // And one that decodes to less than it claims.
        let short = frame_claiming(expected as u64, &rle_block(true, 100, 7));
        let r = decompress_chunk(&short, &mut vec![0; expected]);
        assert!(matches!(r, Err(DecompressError::Corrupt { .. })), "{r:?}");
    }

    #[test]
    fn garbage_missing_sizes_and_trailing_bytes_are_refused() {
        let mut out = vec![0; 1000];
        assert_eq!(
            decompress_chunk(b"not zstd at all", &mut out),
            Err(DecompressError::NotAFrame)
        );
        assert_eq!(
            decompress_chunk(&[], &mut out),
            Err(DecompressError::NotAFrame)
        );
        let src = text(1000);
        let mut z = compressed(&src);
        z.push(0);
        assert_eq!(
            decompress_chunk(&z, &mut out),
            Err(DecompressError::TrailingBytes)
        );
        // Single segment off, no size: FHD 0, window descriptor, one raw block.
        let mut unsized_frame = 0xFD2F_B528u32.to_le_bytes().to_vec();
        unsized_frame.extend_from_slice(&[0x00, 0x50, 0x19, 0x00, 0x00, 1, 2, 3]);
        assert_eq!(
            decompress_chunk(&unsized_frame, &mut out),
            Err(DecompressError::NoContentSize)
        );
        // A corrupted body of a well-formed header.
        let mut z = compressed(&src);
        let mid = z.len() / 2;
        z[mid..].iter_mut().for_each(|b| *b = !*b);
        assert!(decompress_chunk(&z, &mut out).is_err());
    }

    #[test]
    fn pays_only_when_the_link_is_the_bottleneck() {
        const MB: f64 = 1e6;
        // Text (r = 0.2) at 400 MB/s: on a 1 Gbit/s link yes, on loopback no.
        assert!(compression_pays(0.2, 400.0 * MB, 125.0 * MB));
        assert!(!compression_pays(0.2, 400.0 * MB, 700.0 * MB));
        // Random data never, however slow the link.
        assert!(!compression_pays(1.0, 2000.0 * MB, 1.0 * MB));
        assert!(!compression_pays(0.95, 2000.0 * MB, 1.0 * MB));
        // Just below the ratio bound, on a slow link: yes.
        assert!(compression_pays(0.85, 400.0 * MB, 12.5 * MB));
        // Nor does anything short of the headroom: text on a loaded loopback (L = 300 MB/s).
        assert!(!compression_pays(0.5, 200.0 * MB, 100.0 * MB));
        assert!(!compression_pays(0.11, 570.0 * MB, 300.0 * MB));
        assert!(compression_pays(0.11, 570.0 * MB, 125.0 * MB));
    }

    fn feed(g: &mut Governor, chunks: usize, ratio: f64, c_bps: f64, l_bps: f64) -> usize {
        const N: usize = 256 * 1024;
        let mut compressed = 0;
        for _ in 0..chunks {
            let on = g.should_compress();
            let mut wire = N;
            let mut shrank = false;
            if on {
                compressed += 1;
                let z = (ratio < 1.0).then_some((N as f64 * ratio) as usize);
                g.record_compression(N, z, Duration::from_secs_f64(N as f64 / c_bps));
                wire = z.unwrap_or(N);
                shrank = z.is_some();
            }
            // A compressed chunk leaves the link idle part of the time: its write is instant.
            let took = if shrank {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(wire as f64 / l_bps)
            };
            g.record_write(wire, took, shrank);
        }
        compressed
    }

    #[test]
    fn governor_turns_on_and_off_with_the_link_and_the_data() {
        const MB: f64 = 1e6;
        // Loopback: text is probed, found not to pay, and stays raw but for the probes.
        let mut g = Governor::new(Mode::Auto);
        let n = feed(&mut g, 320, 0.2, 400.0 * MB, 700.0 * MB);
        assert!(n <= 320 / PROBE_EVERY as usize + 1, "{n}");
        // The link slows to 1 Gbit/s: every chunk from then on but the raw drain probes, though
        // the compressed chunks' writes no longer show the link's rate.
        let n = feed(&mut g, 320, 0.2, 400.0 * MB, 125.0 * MB);
        // A few chunks go by while the drain rate's average catches up with the slower link.
        assert!(n >= 320 - 320 / PROBE_EVERY as usize - 8, "{n}");
        // Random data on the same slow link: off again after a few chunks.
        let n = feed(&mut g, 320, 1.0, 1500.0 * MB, 125.0 * MB);
        assert!(n <= 320 / PROBE_EVERY as usize + 8, "{n}");
        // Text again: a probe finds it and it turns back on.
        let n = feed(&mut g, 100, 0.2, 400.0 * MB, 125.0 * MB);
        assert!(n >= 100 - PROBE_EVERY as usize - 4, "{n}");
    }

    /// A 1 Gbit/s link and a compressor that feeds it less than it drains (570 MB/s at 0.11
    /// = 63 MB/s of wire): the send buffer empties, so raw probes are written at once. They
    /// must not be read as a fast link.
    #[test]
    fn raw_probes_into_a_drained_buffer_do_not_turn_compression_off() {
        const MB: f64 = 1e6;
        const N: usize = 256 * 1024;
        let (c, ratio, link) = (570.0 * MB, 0.11, 125.0 * MB);
        let mut g = Governor::new(Mode::Auto);
        let mut compressed = 0;
        for k in 0..640 {
            let on = g.should_compress();
            let z = (N as f64 * ratio) as usize;
            if on {
                compressed += 1;
                g.record_compression(N, Some(z), Duration::from_secs_f64(N as f64 / c));
                g.record_write(z, Duration::ZERO, true);
            } else {
                // The first raw chunks fill the buffer at the link's rate; once compression is
                // on the buffer drains and a raw probe's write returns at once.
                let took = if k < 64 || compressed == 0 {
                    Duration::from_secs_f64(N as f64 / link)
                } else {
                    Duration::from_micros(20)
                };
                g.record_write(N, took, false);
            }
        }
        assert!(
            compressed >= 640 - 640 / PROBE_EVERY as usize - 8,
            "{compressed}"
        );
    }

    #[test]
    fn would_compress_foretells_should_compress() {
        const MB: f64 = 1e6;
        let mut g = Governor::new(Mode::Auto);
        for k in 0..200 {
            let link = if k < 100 { 700.0 * MB } else { 125.0 * MB };
            let said = g.would_compress();
            assert_eq!(g.would_compress(), said, "asking twice changes nothing");
            assert_eq!(g.should_compress(), said, "chunk {k}");
            g.record_compression(
                1 << 18,
                Some(1 << 15),
                Duration::from_secs_f64(f64::from(1 << 18) / (400.0 * MB)),
            );
            g.record_write(
                1 << 18,
                Duration::from_secs_f64(f64::from(1 << 18) / link),
                false,
            );
        }
    }

    #[test]
    fn modes_off_and_always_ignore_the_measurements() {
        let mut off = Governor::new(Mode::Off);
        assert_eq!(feed(&mut off, 50, 0.1, 1e9, 1e6), 0);
        let mut always = Governor::new(Mode::Always);
        assert_eq!(feed(&mut always, 50, 1.0, 1e6, 1e9), 50);
        assert_eq!(Mode::Off.capabilities(), 0);
        assert_eq!(Mode::Auto.capabilities(), caps::ZSTD);
    }
}
