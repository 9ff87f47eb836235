//! Peer wire frames and their tokio-util codec.
//!
//! A frame is a `u32` big-endian length `L` (type byte + body), the type byte, then the body.
//! `L` is checked against a bound before anything is reserved for the body, so a hostile peer
//! cannot make us allocate more than the bound; the bound is 64 KiB until the `Hello`s are
//! exchanged, then a chunk plus its header (or a whole bitfield, if that is larger).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::FileId;

pub const PROTOCOL_VERSION: u16 = 1;
/// Frame-length bound before the `Hello`s are exchanged.
pub const PRE_HELLO_MAX_FRAME: u32 = 64 * 1024;
/// Bytes before a chunk's data in a `Chunk` frame: length, type, index.
pub const CHUNK_HEADER_LEN: usize = 4 + 1 + 4;
/// Longest `Bye` text.
pub const MAX_BYE_TEXT: usize = 256;

pub mod ty {
    pub const HELLO: u8 = 0x01;
    pub const BITFIELD: u8 = 0x02;
    pub const HAVE: u8 = 0x03;
    pub const REQUEST: u8 = 0x04;
    pub const CHUNK: u8 = 0x05;
    pub const REJECT: u8 = 0x06;
    pub const CANCEL: u8 = 0x07;
    pub const BYE: u8 = 0x08;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    NotHeld,
    Busy,
    Invalid,
}

impl RejectReason {
    fn code(self) -> u8 {
        match self {
            RejectReason::NotHeld => 1,
            RejectReason::Busy => 2,
            RejectReason::Invalid => 3,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(RejectReason::NotHeld),
            2 => Some(RejectReason::Busy),
            3 => Some(RejectReason::Invalid),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u16,
        file_id: FileId,
        chunk_count: u32,
    },
    /// Raw bitfield bytes; checked against the chunk count with [`crate::Bitfield::from_bytes`]
    /// by the connection, which knows the count.
    Bitfield(Bytes),
    Have(u32),
    Request(u32),
    Chunk {
        index: u32,
        data: Bytes,
    },
    Reject {
        index: u32,
        reason: RejectReason,
    },
    Cancel(u32),
    Bye {
        reason: u8,
        text: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the bound of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("frame with no type byte")]
    Empty,
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("malformed {frame} frame: {reason}")]
    Malformed {
        frame: &'static str,
        reason: &'static str,
    },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Checks a frame's length field against `max`; called before any allocation for its body.
pub fn check_frame_len(len: u32, max: u32) -> Result<(), WireError> {
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(())
}

/// The header of a `Chunk` frame carrying `data_len` bytes of chunk `index`.
pub fn chunk_header(index: u32, data_len: u32) -> [u8; CHUNK_HEADER_LEN] {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    h[..4].copy_from_slice(&(data_len + 5).to_be_bytes());
    h[4] = ty::CHUNK;
    h[5..].copy_from_slice(&index.to_be_bytes());
    h
}

/// The frame bound once a file of `chunk_size`-byte chunks and `chunk_count` chunks is agreed.
pub fn frame_bound(chunk_size: u32, chunk_count: u32) -> u32 {
    let bitfield = 1 + crate::Bitfield::byte_len(chunk_count) as u32;
    (chunk_size + 16).max(bitfield).max(PRE_HELLO_MAX_FRAME)
}

impl Frame {
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Bitfield(_) => "Bitfield",
            Frame::Have(_) => "Have",
            Frame::Request(_) => "Request",
            Frame::Chunk { .. } => "Chunk",
            Frame::Reject { .. } => "Reject",
            Frame::Cancel(_) => "Cancel",
            Frame::Bye { .. } => "Bye",
        }
    }

    /// Parses the type byte and body of one frame (the length is already stripped).
    pub fn parse(kind: u8, mut body: Bytes) -> Result<Frame, WireError> {
        fn need(body: &Bytes, n: usize, frame: &'static str) -> Result<(), WireError> {
            if body.len() != n {
                return Err(WireError::Malformed {
                    frame,
                    reason: "wrong body length",
                });
            }
            Ok(())
        }
        Ok(match kind {
            ty::HELLO => {
                need(&body, 2 + 32 + 4, "Hello")?;
                let version = body.get_u16();
                let mut id = [0u8; 32];
                body.copy_to_slice(&mut id);
                Frame::Hello {
                    version,
                    file_id: FileId(id),
                    chunk_count: body.get_u32(),
                }
            }
            ty::BITFIELD => Frame::Bitfield(body),
            ty::HAVE => {
                need(&body, 4, "Have")?;
                Frame::Have(body.get_u32())
            }
            ty::REQUEST => {
                need(&body, 4, "Request")?;
                Frame::Request(body.get_u32())
            }
            ty::CHUNK => {
                if body.len() < 4 {
                    return Err(WireError::Malformed {
                        frame: "Chunk",
                        reason: "shorter than its index",
                    });
                }
                let index = body.get_u32();
                Frame::Chunk { index, data: body }
            }
            ty::REJECT => {
                need(&body, 5, "Reject")?;
                let index = body.get_u32();
                let reason =
                    RejectReason::from_code(body.get_u8()).ok_or(WireError::Malformed {
                        frame: "Reject",
                        reason: "unknown reason",
                    })?;
                Frame::Reject { index, reason }
            }
            ty::CANCEL => {
                need(&body, 4, "Cancel")?;
                Frame::Cancel(body.get_u32())
            }
            ty::BYE => {
                if body.is_empty() || body.len() > 1 + MAX_BYE_TEXT {
                    return Err(WireError::Malformed {
                        frame: "Bye",
                        reason: "text missing reason or too long",
                    });
                }
                let reason = body.get_u8();
                let text = std::str::from_utf8(&body)
                    .map_err(|_| WireError::Malformed {
                        frame: "Bye",
                        reason: "text is not UTF-8",
                    })?
                    .to_string();
                Frame::Bye { reason, text }
            }
            other => return Err(WireError::UnknownType(other)),
        })
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let body_len = match self {
            Frame::Hello { .. } => 2 + 32 + 4,
            Frame::Bitfield(b) => b.len(),
            Frame::Have(_) | Frame::Request(_) | Frame::Cancel(_) => 4,
            Frame::Chunk { data, .. } => 4 + data.len(),
            Frame::Reject { .. } => 5,
            Frame::Bye { text, .. } => 1 + bye_text(text).len(),
        };
        dst.reserve(5 + body_len);
        dst.put_u32(1 + body_len as u32);
        match self {
            Frame::Hello {
                version,
                file_id,
                chunk_count,
            } => {
                dst.put_u8(ty::HELLO);
                dst.put_u16(*version);
                dst.put_slice(file_id.as_bytes());
                dst.put_u32(*chunk_count);
            }
            Frame::Bitfield(b) => {
                dst.put_u8(ty::BITFIELD);
                dst.put_slice(b);
            }
            Frame::Have(i) => {
                dst.put_u8(ty::HAVE);
                dst.put_u32(*i);
            }
            Frame::Request(i) => {
                dst.put_u8(ty::REQUEST);
                dst.put_u32(*i);
            }
            Frame::Chunk { index, data } => {
                dst.put_u8(ty::CHUNK);
                dst.put_u32(*index);
                dst.put_slice(data);
            }
            Frame::Reject { index, reason } => {
                dst.put_u8(ty::REJECT);
                dst.put_u32(*index);
                dst.put_u8(reason.code());
            }
            Frame::Cancel(i) => {
                dst.put_u8(ty::CANCEL);
                dst.put_u32(*i);
            }
            Frame::Bye { reason, text } => {
                dst.put_u8(ty::BYE);
                dst.put_u8(*reason);
                dst.put_slice(bye_text(text).as_bytes());
            }
        }
    }
}

/// `text` cut to [`MAX_BYE_TEXT`] bytes on a char boundary, so it stays valid UTF-8.
fn bye_text(text: &str) -> &str {
    let mut end = text.len().min(MAX_BYE_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Length-prefixed framing with a bound that the connection raises after the `Hello`s.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame: u32,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec {
            max_frame: PRE_HELLO_MAX_FRAME,
        }
    }
}

impl FrameCodec {
    pub fn new(max_frame: u32) -> Self {
        FrameCodec { max_frame }
    }

    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    pub fn set_max_frame(&mut self, max: u32) {
        self.max_frame = max;
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        check_frame_len(len, self.max_frame)?;
        let total = 4 + len as usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(4);
        let kind = src.get_u8();
        let body = src.split_to(len as usize - 1).freeze();
        Frame::parse(kind, body).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None if src.is_empty() => Ok(None),
            None => Err(WireError::Truncated),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;
    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        item.encode(dst);
        Ok(())
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = WireError;
    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        item.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u16>(), any::<[u8; 32]>(), any::<u32>()).prop_map(|(v, id, n)| Frame::Hello {
                version: v,
                file_id: FileId(id),
                chunk_count: n
            }),
            proptest::collection::vec(any::<u8>(), 0..600).prop_map(|b| Frame::Bitfield(b.into())),
            any::<u32>().prop_map(Frame::Have),
            any::<u32>().prop_map(Frame::Request),
            (
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..3000)
            )
                .prop_map(|(index, d)| Frame::Chunk {
                    index,
                    data: d.into()
                }),
            (any::<u32>(), 1u8..=3).prop_map(|(index, r)| Frame::Reject {
                index,
                reason: RejectReason::from_code(r).unwrap()
            }),
            any::<u32>().prop_map(Frame::Cancel),
            (any::<u8>(), "[a-zé ]{0,80}").prop_map(|(reason, text)| Frame::Bye { reason, text }),
        ]
    }

    fn decode_all(
        codec: &mut FrameCodec,
        bytes: &[u8],
        splits: &[usize],
    ) -> Result<Vec<Frame>, WireError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pos = 0;
        for &s in splits.iter().chain(std::iter::once(&bytes.len())) {
            let end = s.clamp(pos, bytes.len());
            buf.extend_from_slice(&bytes[pos..end]);
            pos = end;
            while let Some(f) = codec.decode(&mut buf)? {
                out.push(f);
            }
        }
        if let Some(f) = codec.decode_eof(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_split(frames in proptest::collection::vec(arb_frame(), 1..8),
                                          mut splits in proptest::collection::vec(any::<usize>(), 0..10)) {
            let mut buf = BytesMut::new();
            for f in &frames { f.encode(&mut buf); }
            let total = buf.len();
            for s in splits.iter_mut() { *s %= total + 1; }
            splits.sort_unstable();
            let mut codec = FrameCodec::new(1 << 20);
            let got = decode_all(&mut codec, &buf, &splits).unwrap();
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_overallocate(bytes in proptest::collection::vec(any::<u8>(), 0..4096),
                                                         max in 1u32..70_000) {
            let mut codec = FrameCodec::new(max);
            let mut buf = BytesMut::from(&bytes[..]);
            loop {
                let before = buf.capacity().max(bytes.len());
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        // Nothing reserved past the bound plus the length prefix.
                        prop_assert!(buf.capacity() <= before.max(4 + max as usize) + 64);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn oversize_length_errors_before_the_body_arrives() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&(PRE_HELLO_MAX_FRAME + 1).to_be_bytes()[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(WireError::TooLarge { .. })
        ));
        assert!(buf.capacity() < 1024, "reserved {} bytes", buf.capacity());
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn named_refusals() {
        let mut c = FrameCodec::default();
        let cases: &[(&[u8], &str)] = &[
            (&[0, 0, 0, 0], "empty"),
            (&[0, 0, 0, 1, 0x09], "unknown type"),
            (&[0, 0, 0, 1, 0x00], "unknown type 0"),
            (&[0, 0, 0, 3, ty::HAVE, 0, 0], "short have"),
            (&[0, 0, 0, 6, ty::REQUEST, 0, 0, 0, 0, 0], "long request"),
            (&[0, 0, 0, 4, ty::CHUNK, 0, 0, 0], "chunk without index"),
            (
                &[0, 0, 0, 6, ty::REJECT, 0, 0, 0, 0, 9],
                "bad reject reason",
            ),
            (&[0, 0, 0, 1, ty::BYE], "bye without reason"),
            (&[0, 0, 0, 3, ty::BYE, 1, 0xff], "bye not utf-8"),
            (&[0, 0, 0, 5, ty::HELLO, 0, 1, 0, 0], "short hello"),
        ];
        for (bytes, what) in cases {
            let mut buf = BytesMut::from(*bytes);
            assert!(c.decode(&mut buf).is_err(), "{what} was accepted");
        }
        // A frame cut short at EOF is an error; a clean EOF is not.
        let mut buf = BytesMut::from(&[0u8, 0, 0, 5, ty::HAVE, 0][..]);
        assert!(matches!(c.decode_eof(&mut buf), Err(WireError::Truncated)));
        assert!(c.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }

    #[test]
    fn chunk_header_matches_encoder() {
        let mut buf = BytesMut::new();
        Frame::Chunk {
            index: 7,
            data: Bytes::from_static(b"abc"),
        }
        .encode(&mut buf);
        assert_eq!(&buf[..CHUNK_HEADER_LEN], &chunk_header(7, 3));
        assert_eq!(frame_bound(262144, 10), 262144 + 16);
        assert_eq!(frame_bound(16384, 1 << 20), 1 + (1 << 17));
    }

    #[test]
    fn long_bye_is_truncated_on_a_char_boundary() {
        let mut buf = BytesMut::new();
        let text = "é".repeat(200); // 400 bytes
        Frame::Bye { reason: 1, text }.encode(&mut buf);
        let f = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
        match f {
            Frame::Bye { text, .. } => {
                assert!(text.len() <= MAX_BYE_TEXT && text.chars().all(|c| c == 'é'))
            }
            other => panic!("{other:?}"),
        }
    }
}
