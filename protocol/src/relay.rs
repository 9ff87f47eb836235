//! The relay's handshake: what a peer says first on its TLS connection to a tracker's relay,
//! and what the relay answers. After a `Join` answered `Ok`, the connection carries the two
//! peers' own mutual-TLS session end to end and the relay only copies bytes.
//!
//! Client to relay: `b"TGRL"`, a version byte (1), an op byte, then the op's body:
//! - `Join` (op 1): the 32-byte token of the introduction (its 64 hex characters decoded);
//! - `Reflect` (op 2): nothing.
//!
//! Relay to client: a status byte, a `u16` big-endian length and that many bytes of UTF-8
//! message (at most [`MAX_MESSAGE`]); for `Reflect` answered `Ok`, then the address the relay
//! saw: a family byte (4 or 6), the 4 or 16 address bytes and a `u16` port. A `Join` is
//! answered only once both sides are there (or the wait ends with `Timeout`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC: &[u8; 4] = b"TGRL";
pub const VERSION: u8 = 1;
/// Longest message in an answer.
pub const MAX_MESSAGE: usize = 256;
/// Length of the client's request for `Join` (the longest).
pub const JOIN_LEN: usize = 4 + 1 + 1 + 32;

/// What a client asks of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRequest {
    /// Pair me with the other side of this introduction.
    Join { token: [u8; 32] },
    /// Tell me the address and port you see me connecting from.
    Reflect,
}

/// The relay's verdict on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayStatus {
    Ok = 0,
    /// No live introduction has this token.
    UnknownToken = 1,
    /// The certificate is not one of the introduction's two peers, or that side already joined.
    NotYours = 2,
    /// The other side did not join in time.
    Timeout = 3,
    /// Over a limit: sessions per identity, or sessions in all.
    OverLimit = 4,
    /// Not the relay's handshake.
    BadRequest = 5,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayWireError {
    #[error("not a TorrentGuard relay handshake")]
    BadMagic,
    #[error("relay handshake version {0} is not supported")]
    BadVersion(u8),
    #[error("unknown relay op {0}")]
    BadOp(u8),
    #[error("unknown relay status {0}")]
    BadStatus(u8),
    #[error("relay handshake cut short")]
    Truncated,
    #[error("relay message longer than {MAX_MESSAGE} bytes or not UTF-8")]
    BadMessage,
    #[error("unknown address family {0}")]
    BadFamily(u8),
}

impl RelayRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(JOIN_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        match self {
            RelayRequest::Join { token } => {
                out.push(1);
                out.extend_from_slice(token);
            }
            RelayRequest::Reflect => out.push(2),
        }
        out
    }

    /// Parses the first 6 bytes (magic, version, op): `Ok(n)` is how many body bytes follow.
    pub fn body_len(head: &[u8; 6]) -> Result<usize, RelayWireError> {
        if &head[..4] != MAGIC {
            return Err(RelayWireError::BadMagic);
        }
        if head[4] != VERSION {
            return Err(RelayWireError::BadVersion(head[4]));
        }
        match head[5] {
            1 => Ok(32),
            2 => Ok(0),
            op => Err(RelayWireError::BadOp(op)),
        }
    }

    /// Parses a whole request: the 6-byte head and exactly its body.
    pub fn decode(bytes: &[u8]) -> Result<RelayRequest, RelayWireError> {
        let head: &[u8; 6] = bytes
            .get(..6)
            .and_then(|h| h.try_into().ok())
            .ok_or(RelayWireError::Truncated)?;
        let n = Self::body_len(head)?;
        let body = &bytes[6..];
        if body.len() != n {
            return Err(RelayWireError::Truncated);
        }
        Ok(match head[5] {
            1 => RelayRequest::Join {
                token: body.try_into().expect("length checked"),
            },
            _ => RelayRequest::Reflect,
        })
    }
}

impl RelayStatus {
    pub fn from_byte(b: u8) -> Result<RelayStatus, RelayWireError> {
        Ok(match b {
            0 => RelayStatus::Ok,
            1 => RelayStatus::UnknownToken,
            2 => RelayStatus::NotYours,
            3 => RelayStatus::Timeout,
            4 => RelayStatus::OverLimit,
            5 => RelayStatus::BadRequest,
            b => return Err(RelayWireError::BadStatus(b)),
        })
    }
}

/// An answer: status, message, and for a reflect the address seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAnswer {
    pub status: RelayStatus,
    pub message: String,
    pub observed: Option<SocketAddr>,
}

impl RelayAnswer {
    pub fn encode(&self) -> Vec<u8> {
        let msg = truncate_utf8(&self.message, MAX_MESSAGE);
        let mut out = Vec::with_capacity(3 + msg.len() + 19);
        out.push(self.status as u8);
        out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        out.extend_from_slice(msg.as_bytes());
        if let Some(addr) = self.observed {
            match addr.ip() {
                IpAddr::V4(ip) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&addr.port().to_be_bytes());
        }
        out
    }

    /// Parses an answer from the start of `bytes`; `Ok(None)`: more bytes are needed.
    /// `reflect`: the request was a `Reflect`, so an `Ok` carries an address.
    /// Returns the answer and how many bytes it took.
    pub fn decode(
        bytes: &[u8],
        reflect: bool,
    ) -> Result<Option<(RelayAnswer, usize)>, RelayWireError> {
        let Some(&[s, h, l]) = bytes.get(..3).map(|b| <&[u8; 3]>::try_from(b).expect("3")) else {
            return Ok(None);
        };
        let status = RelayStatus::from_byte(s)?;
        let n = u16::from_be_bytes([h, l]) as usize;
        if n > MAX_MESSAGE {
            return Err(RelayWireError::BadMessage);
        }
        let Some(msg) = bytes.get(3..3 + n) else {
            return Ok(None);
        };
        let message = std::str::from_utf8(msg)
            .map_err(|_| RelayWireError::BadMessage)?
            .to_string();
        let mut used = 3 + n;
        let mut observed = None;
        if reflect && status == RelayStatus::Ok {
            let Some(&family) = bytes.get(used) else {
                return Ok(None);
            };
            let len = match family {
                4 => 4,
                6 => 16,
                f => return Err(RelayWireError::BadFamily(f)),
            };
            let Some(rest) = bytes.get(used + 1..used + 1 + len + 2) else {
                return Ok(None);
            };
            let ip = if len == 4 {
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&rest[..4]).expect("4")))
            } else {
                IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(&rest[..16]).expect("16"),
                ))
            };
            let port = u16::from_be_bytes([rest[len], rest[len + 1]]);
            observed = Some(SocketAddr::new(ip, port));
            used += 1 + len + 2;
        }
        Ok(Some((
            RelayAnswer {
                status,
                message,
                observed,
            },
            used,
        )))
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The 32 bytes of a token given as 64 hex characters (any case), or `None`.
pub fn token_bytes(hex_token: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_token).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_refuse_garbage() {
        for r in [RelayRequest::Join { token: [7; 32] }, RelayRequest::Reflect] {
            assert_eq!(RelayRequest::decode(&r.encode()), Ok(r));
        }
        let mut bad = RelayRequest::Reflect.encode();
        bad[0] = b'X';
        assert_eq!(RelayRequest::decode(&bad), Err(RelayWireError::BadMagic));
        let mut bad = RelayRequest::Reflect.encode();
        bad[4] = 9;
        assert_eq!(
            RelayRequest::decode(&bad),
            Err(RelayWireError::BadVersion(9))
        );
        let mut bad = RelayRequest::Reflect.encode();
        bad[5] = 3;
        assert_eq!(RelayRequest::decode(&bad), Err(RelayWireError::BadOp(3)));
        let join = RelayRequest::Join { token: [1; 32] }.encode();
        assert_eq!(
            RelayRequest::decode(&join[..20]),
            Err(RelayWireError::Truncated)
        );
    }

    #[test]
    fn answers_round_trip_in_any_split() {
        let answers = [
            (
                RelayAnswer {
                    status: RelayStatus::Ok,
                    message: String::new(),
                    observed: Some("203.0.113.9:40000".parse().unwrap()),
                },
                true,
            ),
            (
                RelayAnswer {
                    status: RelayStatus::Ok,
                    message: "ok".into(),
                    observed: Some("[2001:db8::1]:7".parse().unwrap()),
                },
                true,
            ),
            (
                RelayAnswer {
                    status: RelayStatus::Timeout,
                    message: "the other side did not come".into(),
                    observed: None,
                },
                false,
            ),
        ];
        for (a, reflect) in answers {
            let bytes = a.encode();
            for cut in 0..bytes.len() {
                assert_eq!(
                    RelayAnswer::decode(&bytes[..cut], reflect),
                    Ok(None),
                    "cut {cut}"
                );
            }
            let mut more = bytes.clone();
            more.extend_from_slice(b"tls bytes");
            assert_eq!(
                RelayAnswer::decode(&more, reflect),
                Ok(Some((a, bytes.len())))
            );
        }
        assert_eq!(
            RelayAnswer::decode(&[9, 0, 0], false),
            Err(RelayWireError::BadStatus(9))
        );
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let a = RelayAnswer {
            status: RelayStatus::OverLimit,
            message: "é".repeat(200),
            observed: None,
        };
        let (back, _) = RelayAnswer::decode(&a.encode(), false).unwrap().unwrap();
        assert!(back.message.len() <= MAX_MESSAGE);
        assert!(back.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn tokens_are_64_hex_characters() {
        let t = "ab".repeat(32);
        assert_eq!(token_bytes(&t), Some([0xab; 32]));
        assert_eq!(token_bytes("abc"), None);
        assert_eq!(token_bytes(&"zz".repeat(32)), None);
    }
}
