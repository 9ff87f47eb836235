//! Frame I/O over a peer's TLS stream.
//!
//! Control frames go through `protocol`'s codec logic; `Chunk` bodies are read straight into a
//! reusable buffer from a [`BufferPool`], so the hot path allocates nothing per chunk.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use torrentguard_protocol::wire::{self, Frame, WireError, check_frame_len, ty};

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
    /// A chunk's data, in a buffer from the pool: give it back when done.
    Chunk {
        index: u32,
        data: Vec<u8>,
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
        let mut head = [0u8; 5];
        // First byte separately: EOF here is a clean close, anywhere later a truncation.
        match self.io.read(&mut head[..1]).await? {
            0 => return Ok(None),
            _ => read_full(&mut self.io, &mut head[1..4]).await?,
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        // Checked before reading (let alone allocating) anything more.
        check_frame_len(len, self.max_frame)?;
        read_full(&mut self.io, &mut head[4..]).await?;
        let body_len = len as usize - 1;
        if head[4] == ty::CHUNK {
            if body_len < 4 {
                return Err(WireError::Malformed {
                    frame: "Chunk",
                    reason: "shorter than its index",
                });
            }
            let mut idx = [0u8; 4];
            read_full(&mut self.io, &mut idx).await?;
            let mut data = pool.take();
            data.resize(body_len - 4, 0);
            read_full(&mut self.io, &mut data).await?;
            return Ok(Some(Incoming::Chunk {
                index: u32::from_be_bytes(idx),
                data,
            }));
        }
        self.control.resize(body_len, 0);
        read_full(&mut self.io, &mut self.control).await?;
        let frame = Frame::parse(head[4], Bytes::copy_from_slice(&self.control))?;
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
            Some(Incoming::Chunk { index: 9, data }) => assert_eq!(data, b"payload"),
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
