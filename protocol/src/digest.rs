//! Digests and the hash algorithms a manifest may name.
//!
//! Hashing uses aws-lc-rs, the same backend rustls uses, so the whole workspace carries one
//! crypto implementation; its SHA-256 uses the CPU's SHA extensions, which matters because the
//! hasher is on the hot path of both sharing and downloading.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest as lc;
use serde::{Deserialize, Serialize};

/// The hash algorithm of a manifest's chunk and whole-file digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgo {
    #[default]
    Sha256,
    /// Accepted for compatibility with older tooling; not collision resistant.
    Sha1,
}

impl HashAlgo {
    /// Digest length in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha1 => 20,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha1 => "sha1",
        }
    }

    pub(crate) const fn code(self) -> u8 {
        match self {
            HashAlgo::Sha256 => 1,
            HashAlgo::Sha1 => 2,
        }
    }

    fn algorithm(self) -> &'static lc::Algorithm {
        match self {
            HashAlgo::Sha256 => &lc::SHA256,
            HashAlgo::Sha1 => &lc::SHA1_FOR_LEGACY_USE_ONLY,
        }
    }

    /// Starts an incremental hash.
    pub fn hasher(self) -> Hasher {
        Hasher {
            algo: self,
            ctx: lc::Context::new(self.algorithm()),
        }
    }

    /// Hashes one buffer at once.
    pub fn digest(self, data: &[u8]) -> Digest {
        let mut h = self.hasher();
        h.update(data);
        h.finish()
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HashAlgo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256" => Ok(HashAlgo::Sha256),
            "sha1" => Ok(HashAlgo::Sha1),
            other => Err(format!(
                "unknown hash algorithm {other:?} (expected sha256 or sha1)"
            )),
        }
    }
}

/// An incremental hash of one of the [`HashAlgo`]s. Lives on the stack: no allocation.
#[derive(Clone)]
pub struct Hasher {
    algo: HashAlgo,
    ctx: lc::Context,
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
    }

    pub fn finish(self) -> Digest {
        let out = self.ctx.finish();
        Digest::from_slice(out.as_ref()).expect("aws-lc-rs yields 20- or 32-byte digests")
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }
}

/// A SHA-256 or SHA-1 digest, stored inline (`Copy`, no heap), serialised as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    bytes: [u8; 32],
    len: u8,
}

/// A digest of a length no algorithm produces, or hex that is not hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest is {0} bytes; expected 20 (sha1) or 32 (sha256)")]
    Length(usize),
    #[error("digest is not lowercase hex")]
    Hex,
}

impl Digest {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DigestError> {
        if bytes.len() != 20 && bytes.len() != 32 {
            return Err(DigestError::Length(bytes.len()));
        }
        let mut out = [0u8; 32];
        out[..bytes.len()].copy_from_slice(bytes);
        Ok(Digest {
            bytes: out,
            len: bytes.len() as u8,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 40 && s.len() != 64 {
            return Err(DigestError::Length(s.len() / 2));
        }
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(DigestError::Hex);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out[..s.len() / 2]).map_err(|_| DigestError::Hex)?;
        Ok(Digest {
            bytes: out,
            len: (s.len() / 2) as u8,
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            HashAlgo::Sha256.digest(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            HashAlgo::Sha1.digest(b"abc").to_string(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn hex_round_trip_and_refusals() {
        let d = HashAlgo::Sha256.digest(b"x");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert_eq!("ab".parse::<Digest>(), Err(DigestError::Length(1)));
        assert_eq!(
            d.to_string().to_uppercase().parse::<Digest>(),
            Err(DigestError::Hex)
        );
        assert_eq!("zz".repeat(32).parse::<Digest>(), Err(DigestError::Hex));
    }
}
