//! Frame I/O over a peer's TLS stream.
//!
//! [`FrameReader`] is the only frame decoder: every check (length bound, type, chunk header,
//! control-frame bodies) is `protocol::wire`'s ([`FrameHead`], [`Frame::parse`]); this file only
//! moves bytes. `Chunk` bodies are read straight into a reusable buffer from a [`BufferPool`],
//! so the hot path allocates nothing per chunk. The property tests below run this reader over
//! arbitrarily split and arbitrary input.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use torrentguard_protocol::wire::{self, Frame, FrameHead, WireError};

/// Fixed-capacity buffers handed out and returned, so chunk data never reallocates.
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<Mutex<Vec<Vec<u8>>>>,
    capacity: usize,
}

impl BufferPool {
    pub fn new(capacity: usize) -> Self {
        BufferPool {
            inner: Arc::new(Mutex::new(Vec::new())),
            capacity,
        }
    }

    /// The capacity of the pool's buffers.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A buffer with at least the pool's capacity, empty.
    pub fn take(&self) -> Vec<u8> {
        let reused = self.inner.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut b = reused.unwrap_or_else(|| Vec::with_capacity(self.capacity));
        b.clear();
        b
    }

    pub fn give(&self, buf: Vec<u8>) {
        if buf.capacity() >= self.capacity {
            let mut v = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            // Bound what an idle pool keeps.
            if v.len() < 32 {
                v.push(buf);
            }
        }
    }
}

/// One frame as read by [`FrameReader`].
#[derive(Debug)]
pub enum Incoming {
    Control(Frame),
    /// A chunk's data, in a buffer from the pool: give it back when done. `compressed`: a
    /// `ChunkZstd` frame, whose data is one zstd frame still to be checked and decoded.
    Chunk {
        index: u32,
        data: Vec<u8>,
        compressed: bool,
    },
}

/// Reads frames from one half of a connection.
pub struct FrameReader<R> {
    io: R,
    max_frame: u32,
    control: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        FrameReader {
            io,
            max_frame: wire::PRE_HELLO_MAX_FRAME,
            control: Vec::new(),
        }
    }

    pub fn set_max_frame(&mut self, max: u32) {
        self.max_frame = max;
    }

    /// The next frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn next(&mut self, pool: &BufferPool) -> Result<Option<Incoming>, WireError> {
        let mut prefix = [0u8; 4];
        // First byte separately: EOF here is a clean close, anywhere later a truncation.
        match self.io.read(&mut prefix[..1]).await? {
            0 => return Ok(None),
            _ => read_full(&mut self.io, &mut prefix[1..]).await?,
        }
        // Checked before reading (let alone allocating) anything more.
        let len = FrameHead::check_len(prefix, self.max_frame)?;
        let mut kind = [0u8; 1];
        read_full(&mut self.io, &mut kind).await?;
        let head = FrameHead::new(len, kind[0])?;
        if let Some(data_len) = head.chunk_data_len() {
            let mut idx = [0u8; 4];
            read_full(&mut self.io, &mut idx).await?;
            let mut data = pool.take();
            data.resize(data_len, 0);
            if let Err(e) = read_full(&mut self.io, &mut data).await {
                pool.give(data);
                return Err(e);
            }
            return Ok(Some(Incoming::Chunk {
                index: u32::from_be_bytes(idx),
                data,
                compressed: head.kind == wire::ty::CHUNK_ZSTD,
            }));
        }
        self.control.resize(head.body_len as usize, 0);
        read_full(&mut self.io, &mut self.control).await?;
        let frame = Frame::parse(head.kind, Bytes::copy_from_slice(&self.control))?;
        Ok(Some(Incoming::Control(frame)))
    }
}

async fn read_full<R: AsyncRead + Unpin>(io: &mut R, buf: &mut [u8]) -> Result<(), WireError> {
    match io.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(WireError::Truncated),
        Err(e) => Err(WireError::Io(e)),
    }
}

/// Writes one control frame (not flushed).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    io: &mut W,
    frame: &Frame,
    scratch: &mut BytesMut,
) -> std::io::Result<()> {
    scratch.clear();
    frame.encode(scratch);
    io.write_all(scratch).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;
    use torrentguard_protocol::wire::{arb_frame, ty};

    /// In-memory input handed out in pieces that end at `cuts`, as a network delivers it. Past
    /// the end it reports EOF, or with `strict` an error, so a test can prove a decision was
    /// taken without reading further.
    struct Splits {
        data: Vec<u8>,
        cuts: Vec<usize>,
        pos: usize,
        strict: bool,
    }

    impl Splits {
        fn new(data: Vec<u8>, mut cuts: Vec<usize>) -> Self {
            for c in cuts.iter_mut() {
                *c %= data.len() + 1;
            }
            cuts.sort_unstable();
            Splits {
                data,
                cuts,
                pos: 0,
                strict: false,
            }
        }
    }

    impl AsyncRead for Splits {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let this = self.get_mut();
            if this.pos == this.data.len() {
                if this.strict {
                    return Poll::Ready(Err(std::io::Error::other("read past the end")));
                }
                return Poll::Ready(Ok(()));
            }
            let next_cut = this.cuts.iter().copied().find(|&c| c > this.pos);
            let end = next_cut
                .unwrap_or(this.data.len())
                .min(this.pos + buf.remaining());
            buf.put_slice(&this.data[this.pos..end]);
            this.pos = end;
            Poll::Ready(Ok(()))
        }
    }

    fn block_on<T>(fut: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
            .block_on(fut)
    }

    /// Everything `reader` yields until a clean end or the first error; chunk buffers go back
    /// to `pool`, so later chunks reuse them (stale bytes would show up as a mismatch).
    async fn read_all(
        reader: &mut FrameReader<Splits>,
        pool: &BufferPool,
    ) -> (Vec<Frame>, Option<WireError>) {
        let mut out = Vec::new();
        loop {
            match reader.next(pool).await {
                Ok(Some(Incoming::Control(f))) => out.push(f),
                Ok(Some(Incoming::Chunk {
                    index,
                    data,
                    compressed,
                })) => {
                    let bytes = Bytes::copy_from_slice(&data);
                    out.push(if compressed {
                        Frame::ChunkZstd { index, data: bytes }
                    } else {
                        Frame::Chunk { index, data: bytes }
                    });
                    pool.give(data);
                }
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    fn encoded(frames: &[Frame]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        for f in frames {
            f.encode(&mut buf);
        }
        buf.to_vec()
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_split(frames in proptest::collection::vec(arb_frame(), 1..8),
                                          cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
            let pool = BufferPool::new(16);
            let mut reader = FrameReader::new(Splits::new(encoded(&frames), cuts));
            reader.set_max_frame(1 << 20);
            let (got, err) = block_on(read_all(&mut reader, &pool));
            prop_assert!(err.is_none(), "{err:?}");
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn a_stream_cut_inside_a_frame_is_truncated(frames in proptest::collection::vec(arb_frame(), 1..5),
                                                    cut in any::<usize>()) {
            let bytes = encoded(&frames);
            let last = encoded(&frames[frames.len() - 1..]).len();
            // Anywhere inside the last frame, past its first byte.
            let keep = bytes.len() - last + 1 + cut % (last - 1);
            let mut reader = FrameReader::new(Splits::new(bytes[..keep].to_vec(), vec![]));
            reader.set_max_frame(1 << 20);
            let (got, err) = block_on(read_all(&mut reader, &BufferPool::new(16)));
            prop_assert!(matches!(err, Some(WireError::Truncated)), "{err:?}");
            prop_assert_eq!(&got[..], &frames[..frames.len() - 1]);
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_overallocate(bytes in proptest::collection::vec(any::<u8>(), 0..4096),
                                                         cuts in proptest::collection::vec(any::<usize>(), 0..10),
                                                         max in 1u32..70_000) {
            let pool = BufferPool::new(16);
            let mut reader = FrameReader::new(Splits::new(bytes, cuts));
            reader.set_max_frame(max);
            block_on(async {
                while let Ok(Some(item)) = reader.next(&pool).await {
                    if let Incoming::Chunk { data, .. } = item {
                        assert!(data.len() < max as usize);
                    }
                }
            });
            // Nothing sized past the bound, whatever the lengths claimed.
            prop_assert!(reader.control.capacity() <= 2 * max as usize);
        }

        #[test]
        fn oversize_length_errors_before_its_body_arrives(max in 1u32..(1 << 24), over in 1u32..u32::MAX) {
            let len = max.saturating_add(over);
            let mut input = Splits::new(len.to_be_bytes().to_vec(), vec![]);
            input.strict = true;
            let mut reader = FrameReader::new(input);
            reader.set_max_frame(max);
            let r = block_on(reader.next(&BufferPool::new(16)));
            prop_assert!(matches!(r, Err(WireError::TooLarge { .. })), "{r:?}");
        }
    }

    #[tokio::test]
    async fn unknown_type_and_short_chunk_are_refused_before_their_body() {
        for (head, what) in [
            ([0u8, 0, 1, 0, 0x0a], "unknown type"),
            ([0, 0, 0, 4, ty::CHUNK], "chunk without index"),
        ] {
            let mut input = Splits::new(head.to_vec(), vec![]);
            input.strict = true;
            let r = FrameReader::new(input).next(&BufferPool::new(16)).await;
            assert!(
                matches!(
                    r,
                    Err(WireError::UnknownType(_) | WireError::Malformed { .. })
                ),
                "{what}: {r:?}"
            );
        }
    }

    #[tokio::test]
    async fn reads_control_and_chunk_frames_and_refuses_oversize() {
        let mut bytes = BytesMut::new();
        Frame::Have(3).encode(&mut bytes);
        Frame::Chunk {
            index: 9,
            data: Bytes::from_static(b"payload"),
        }
        .encode(&mut bytes);
        let pool = BufferPool::new(16);
        let mut r = FrameReader::new(&bytes[..]);
        assert!(matches!(
            r.next(&pool).await.unwrap(),
            Some(Incoming::Control(Frame::Have(3)))
        ));
        match r.next(&pool).await.unwrap() {
            Some(Incoming::Chunk {
                index: 9,
                data,
                compressed: false,
            }) => assert_eq!(data, b"payload"),
            other => panic!("{other:?}"),
        }
        assert!(r.next(&pool).await.unwrap().is_none());

        let big = (wire::PRE_HELLO_MAX_FRAME + 1).to_be_bytes();
        let mut r = FrameReader::new(&big[..]);
        assert!(matches!(
            r.next(&pool).await,
            Err(WireError::TooLarge { .. })
        ));
        let cut = [0u8, 0, 0, 9, ty::HAVE];
        let mut r = FrameReader::new(&cut[..]);
        assert!(matches!(r.next(&pool).await, Err(WireError::Truncated)));
    }
}
