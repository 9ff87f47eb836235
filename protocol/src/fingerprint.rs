//! Identity: `sha256:` followed by the lowercase hex SHA-256 of a certificate's DER encoding.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::HashAlgo;

/// The SHA-256 fingerprint of a certificate: the identity of a tracker or a peer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fingerprint must be \"sha256:\" followed by 64 lowercase hex digits")]
pub struct FingerprintError;

impl Fingerprint {
    /// The fingerprint of a certificate given as DER.
    pub fn of_der(cert_der: &[u8]) -> Self {
        let d = HashAlgo::Sha256.digest(cert_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_bytes());
        Fingerprint(out)
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// First 8 hex digits, for log lines and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.trim().strip_prefix("sha256:").ok_or(FingerprintError)?;
        // Accept the colon-separated form openssl prints, too: "AB:CD:…".
        let cleaned: String = hex_part.chars().filter(|c| *c != ':').collect();
        if cleaned.len() != 64 || !cleaned.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FingerprintError);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(cleaned.to_ascii_lowercase(), &mut out)
            .map_err(|_| FingerprintError)?;
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip() {
        let fp = Fingerprint::of_der(b"not really a certificate");
        let s = fp.to_string();
        assert!(s.starts_with("sha256:"));
        assert_eq!(s.len(), 7 + 64);
        assert_eq!(s.parse::<Fingerprint>().unwrap(), fp);
        let upper_colons = format!(
            "sha256:{}",
            fp.as_bytes()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":")
        );
        assert_eq!(upper_colons.parse::<Fingerprint>().unwrap(), fp);
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "sha256:",
            "sha1:00",
            "sha256:zz",
            &format!("sha256:{}", "0".repeat(63)),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }
}
