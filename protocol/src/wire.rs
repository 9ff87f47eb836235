//! Peer wire frames: encoding, and the sans-I/O half of decoding.
//!
//! A frame is a `u32` big-endian length `L` (type byte + body), the type byte, then the body.
//! `L` is checked against a bound before anything is reserved for the body, so a hostile peer
//! cannot make us allocate more than the bound; the bound is 64 KiB until the `Hello`s are
//! exchanged, then a chunk plus its header (or a whole bitfield, if that is larger).
//!
//! There is one decoder, the agent's `FrameReader` (`peer-agent/src/conn.rs`): it reads the
//! five header bytes, checks them with [`FrameHead`], then reads a `Chunk` body straight into a
//! pooled buffer or hands a control body to [`Frame::parse`]. Every check lives here; the
//! reader only moves bytes, and its property tests cover the whole path.

use bytes::{Buf, BufMut, Bytes, BytesMut};

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
    /// A chunk as one zstd frame (only on connections whose `Hello`s both set
    /// [`crate::compression::caps::ZSTD`]).
    pub const CHUNK_ZSTD: u8 = 0x09;
}

/// Body length of a `Hello` without capabilities (as every version before them sent it).
pub const HELLO_LEN: usize = 2 + 32 + 4;

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
        /// A trailing byte of [`crate::compression::caps`] bits. `None`: the short form, which
        /// is all that peers before capabilities send and accept (their parser wants exactly
        /// [`HELLO_LEN`] bytes), so a seeder answers a short `Hello` with a short one.
        capabilities: Option<u8>,
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
    /// A chunk as one zstd frame ([`crate::compression`]).
    ChunkZstd {
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

/// A frame's length prefix and type byte, checked: what follows is `body_len` bytes of a frame
/// of a known type, within the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub kind: u8,
    pub body_len: u32,
}

impl FrameHead {
    /// Bytes of the length prefix and type byte.
    pub const LEN: usize = 5;

    /// Checks the length prefix against `max` and returns `L`: called as soon as its four
    /// bytes are in, before the type byte is read or anything is reserved for the body.
    pub fn check_len(prefix: [u8; 4], max: u32) -> Result<u32, WireError> {
        let len = u32::from_be_bytes(prefix);
        if len == 0 {
            return Err(WireError::Empty);
        }
        if len > max {
            return Err(WireError::TooLarge { len, max });
        }
        Ok(len)
    }

    /// With the type byte: refuses an unknown type, and a `Chunk` too short for its index,
    /// before the body is read. `len` must come from [`FrameHead::check_len`].
    pub fn new(len: u32, kind: u8) -> Result<FrameHead, WireError> {
        if !(ty::HELLO..=ty::CHUNK_ZSTD).contains(&kind) {
            return Err(WireError::UnknownType(kind));
        }
        let body_len = len.saturating_sub(1);
        if is_chunk(kind) && body_len < 4 {
            return Err(WireError::Malformed {
                frame: "Chunk",
                reason: "shorter than its index",
            });
        }
        Ok(FrameHead { kind, body_len })
    }

    /// Bytes of chunk data in a `Chunk` or `ChunkZstd` frame (the body less the index).
    pub fn chunk_data_len(&self) -> Option<usize> {
        is_chunk(self.kind).then(|| self.body_len.saturating_sub(4) as usize)
    }
}

/// Whether frames of type `kind` carry a chunk (raw or compressed) after an index.
pub fn is_chunk(kind: u8) -> bool {
    kind == ty::CHUNK || kind == ty::CHUNK_ZSTD
}

/// The header of a `Chunk` frame carrying `data_len` bytes of chunk `index`.
pub fn chunk_header(index: u32, data_len: u32) -> [u8; CHUNK_HEADER_LEN] {
    chunk_header_of(ty::CHUNK, index, data_len)
}

/// The header of a chunk frame of type `kind` (`Chunk` or `ChunkZstd`) with `data_len` bytes.
pub fn chunk_header_of(kind: u8, index: u32, data_len: u32) -> [u8; CHUNK_HEADER_LEN] {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    h[..4].copy_from_slice(&(data_len + 5).to_be_bytes());
    h[4] = kind;
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
            Frame::ChunkZstd { .. } => "ChunkZstd",
            Frame::Reject { .. } => "Reject",
            Frame::Cancel(_) => "Cancel",
            Frame::Bye { .. } => "Bye",
        }
    }

    /// Parses the type byte and body of one frame (the length is already stripped). The
    /// connection reads `Chunk` bodies into pooled buffers itself, so at run time this parses
    /// control frames.
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
                if body.len() != HELLO_LEN && body.len() != HELLO_LEN + 1 {
                    need(&body, HELLO_LEN, "Hello")?;
                }
                let version = body.get_u16();
                let mut id = [0u8; 32];
                body.copy_to_slice(&mut id);
                Frame::Hello {
                    version,
                    file_id: FileId(id),
                    chunk_count: body.get_u32(),
                    capabilities: body.has_remaining().then(|| body.get_u8()),
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
            ty::CHUNK | ty::CHUNK_ZSTD => {
                if body.len() < 4 {
                    return Err(WireError::Malformed {
                        frame: "Chunk",
                        reason: "shorter than its index",
                    });
                }
                let index = body.get_u32();
                if kind == ty::CHUNK {
                    Frame::Chunk { index, data: body }
                } else {
                    Frame::ChunkZstd { index, data: body }
                }
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
            Frame::Hello { capabilities, .. } => HELLO_LEN + usize::from(capabilities.is_some()),
            Frame::Bitfield(b) => b.len(),
            Frame::Have(_) | Frame::Request(_) | Frame::Cancel(_) => 4,
            Frame::Chunk { data, .. } | Frame::ChunkZstd { data, .. } => 4 + data.len(),
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
                capabilities,
            } => {
                dst.put_u8(ty::HELLO);
                dst.put_u16(*version);
                dst.put_slice(file_id.as_bytes());
                dst.put_u32(*chunk_count);
                if let Some(c) = capabilities {
                    dst.put_u8(*c);
                }
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
            Frame::ChunkZstd { index, data } => {
                dst.put_u8(ty::CHUNK_ZSTD);
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

/// Arbitrary well-formed frames, for property tests here and in the crates that decode them.
#[cfg(any(test, feature = "proptest"))]
pub fn arb_frame() -> impl proptest::strategy::Strategy<Value = Frame> {
    use proptest::prelude::*;
    prop_oneof![
        (
            any::<u16>(),
            any::<[u8; 32]>(),
            any::<u32>(),
            any::<Option<u8>>()
        )
            .prop_map(|(v, id, n, c)| Frame::Hello {
                version: v,
                file_id: FileId(id),
                chunk_count: n,
                capabilities: c
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
        (
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..3000)
        )
            .prop_map(|(index, d)| Frame::ChunkZstd {
                index,
                data: d.into()
            }),
        (any::<u32>(), 1u8..=3).prop_map(|(index, r)| Frame::Reject {
            index,
            // The codes 1..=3 are exactly the known ones.
            reason: RejectReason::from_code(r).unwrap_or(RejectReason::Invalid)
        }),
        any::<u32>().prop_map(Frame::Cancel),
        (any::<u8>(), "[a-zé ]{0,80}").prop_map(|(reason, text)| Frame::Bye { reason, text }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One whole frame at the start of `bytes`, decoded by the same checks the connection
    /// makes, in the same order; `None` if the frame is not all there.
    fn decode_one(bytes: &[u8], max: u32) -> Result<Option<(Frame, usize)>, WireError> {
        let Some(prefix) = bytes.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = FrameHead::check_len(*prefix, max)?;
        let Some(&kind) = bytes.get(4) else {
            return Ok(None);
        };
        let head = FrameHead::new(len, kind)?;
        let end = FrameHead::LEN + head.body_len as usize;
        let Some(body) = bytes.get(FrameHead::LEN..end) else {
            return Ok(None);
        };
        let frame = Frame::parse(kind, Bytes::copy_from_slice(body))?;
        Ok(Some((frame, end)))
    }

    fn decoded(bytes: &[u8]) -> Result<Frame, WireError> {
        match decode_one(bytes, PRE_HELLO_MAX_FRAME)? {
            Some((f, _)) => Ok(f),
            None => Err(WireError::Truncated),
        }
    }

    proptest! {
        #[test]
        fn parse_inverts_encode(frame in arb_frame()) {
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            let (got, used) = decode_one(&buf, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(got, frame);
        }
    }

    #[test]
    fn oversize_length_errors_from_the_prefix_alone() {
        for len in [PRE_HELLO_MAX_FRAME + 1, u32::MAX] {
            assert!(matches!(
                FrameHead::check_len(len.to_be_bytes(), PRE_HELLO_MAX_FRAME),
                Err(WireError::TooLarge { .. })
            ));
        }
        assert_eq!(
            FrameHead::check_len(PRE_HELLO_MAX_FRAME.to_be_bytes(), PRE_HELLO_MAX_FRAME).unwrap(),
            PRE_HELLO_MAX_FRAME
        );
    }

    #[test]
    fn named_refusals() {
        let cases: &[(&[u8], &str)] = &[
            (&[0, 0, 0, 0], "empty"),
            (&[0, 0, 0, 1, 0x0a], "unknown type"),
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
            assert!(
                !matches!(decoded(bytes), Ok(_) | Err(WireError::Truncated)),
                "{what} was accepted"
            );
        }
        // Refused from the head alone, before the body arrives.
        assert!(matches!(
            FrameHead::new(1, 0x0a),
            Err(WireError::UnknownType(0x0a))
        ));
        assert!(FrameHead::new(4, ty::CHUNK).is_err());
        assert_eq!(
            FrameHead::new(5, ty::CHUNK).unwrap().chunk_data_len(),
            Some(0)
        );
        assert_eq!(FrameHead::new(5, ty::HAVE).unwrap().chunk_data_len(), None);
        assert!(FrameHead::new(4, ty::CHUNK_ZSTD).is_err());
        assert_eq!(
            FrameHead::new(9, ty::CHUNK_ZSTD).unwrap().chunk_data_len(),
            Some(4)
        );
    }

    /// The short `Hello` is what peers before capabilities send and accept, byte for byte; the
    /// long one adds one byte of capability bits; any other length is refused.
    #[test]
    fn hello_with_and_without_capabilities() {
        let hello = |capabilities| Frame::Hello {
            version: PROTOCOL_VERSION,
            file_id: FileId([3; 32]),
            chunk_count: 9,
            capabilities,
        };
        let mut short = BytesMut::new();
        hello(None).encode(&mut short);
        assert_eq!(short.len(), 5 + HELLO_LEN);
        assert_eq!(&short[..5], &[0, 0, 0, 1 + HELLO_LEN as u8, ty::HELLO]);
        assert_eq!(decoded(&short).unwrap(), hello(None));
        let mut long = BytesMut::new();
        hello(Some(crate::compression::caps::ZSTD)).encode(&mut long);
        assert_eq!(&long[..short.len()][5..], &short[5..]);
        assert_eq!(long[long.len() - 1], crate::compression::caps::ZSTD);
        assert_eq!(
            decoded(&long).unwrap(),
            hello(Some(crate::compression::caps::ZSTD))
        );
        let mut two_more = long.to_vec();
        two_more.push(0);
        two_more[3] += 1;
        assert!(decoded(&two_more).is_err());
    }

    #[test]
    fn chunk_zstd_header_matches_encoder() {
        let mut buf = BytesMut::new();
        Frame::ChunkZstd {
            index: 7,
            data: Bytes::from_static(b"abcd"),
        }
        .encode(&mut buf);
        assert_eq!(
            &buf[..CHUNK_HEADER_LEN],
            &chunk_header_of(ty::CHUNK_ZSTD, 7, 4)
        );
        match decoded(&buf).unwrap() {
            Frame::ChunkZstd { index: 7, data } => assert_eq!(&data[..], b"abcd"),
            other => panic!("{other:?}"),
        }
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
        match decoded(&buf).unwrap() {
            Frame::Bye { text, .. } => {
                assert!(text.len() <= MAX_BYE_TEXT && text.chars().all(|c| c == 'é'))
            }
            other => panic!("{other:?}"),
        }
    }
}
