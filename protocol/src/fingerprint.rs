//! Identity: `sha256:` followed by the lowercase hex SHA-256 of a certificate's DER encoding.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::HashAlgo;

/// The SHA-256 fingerprint of a certificate: the identity of a tracker or a peer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a SHA-256 fingerprint; accepted forms (any case): sha256:<64 hex digits>, <64 hex digits>, \
     or openssl's 32 colon-separated pairs AB:CD:… (bare, or after \"SHA256:\" or \"sha256 Fingerprint=\")"
)]
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

    /// Accepts exactly the forms a user meets: ours (`sha256:` + 64 hex), the bare 64 hex
    /// digits, and openssl's `AB:CD:…` (32 pairs) with or without the `SHA256:` / `sha256
    /// Fingerprint=` prefix openssl 1.x and 3.x print; any case. Anything else (another
    /// length, another algorithm's prefix, pairs partly without colons) is refused rather
    /// than guessed at.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = strip_prefix_ignore_case(s.trim());
        let hex_digits = if body.contains(':') {
            colon_pairs(body)?
        } else {
            body.to_string()
        };
        if hex_digits.len() != 64 || !hex_digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FingerprintError);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digits.to_ascii_lowercase(), &mut out)
            .map_err(|_| FingerprintError)?;
        Ok(Fingerprint(out))
    }
}

/// The text after an optional `sha256:` or `sha256 Fingerprint=` prefix (any case).
fn strip_prefix_ignore_case(s: &str) -> &str {
    for prefix in ["sha256 fingerprint=", "sha256:"] {
        if s.len() >= prefix.len()
            && s.is_char_boundary(prefix.len())
            && s[..prefix.len()].eq_ignore_ascii_case(prefix)
        {
            return &s[prefix.len()..];
        }
    }
    s
}

/// openssl's colon form: exactly 32 groups of exactly 2 hex digits, joined.
fn colon_pairs(s: &str) -> Result<String, FingerprintError> {
    let pairs: Vec<&str> = s.split(':').collect();
    if pairs.len() != 32
        || !pairs
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(FingerprintError);
    }
    Ok(pairs.concat())
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

    fn colon_form(fp: &Fingerprint) -> String {
        fp.as_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn accepts_every_documented_form_in_any_case() {
        let fp = Fingerprint::of_der(b"a certificate");
        let hex = hex::encode(fp.as_bytes());
        let colons = colon_form(&fp);
        for good in [
            format!("sha256:{hex}"),
            format!("SHA256:{}", hex.to_uppercase()),
            hex.clone(),
            hex.to_uppercase(),
            colons.clone(),
            colons.to_lowercase(),
            format!("SHA256:{colons}"),
            format!("sha256:{colons}"),
            format!("sha256 Fingerprint={colons}"),
            format!("SHA256 Fingerprint={colons}"),
            format!("  sha256:{hex}\n"),
        ] {
            assert_eq!(good.parse::<Fingerprint>(), Ok(fp), "{good}");
        }
    }

    #[test]
    fn refuses_ambiguous_or_foreign_forms() {
        let fp = Fingerprint::of_der(b"a certificate");
        let hex = hex::encode(fp.as_bytes());
        let colons = colon_form(&fp);
        for bad in [
            format!("sha1:{hex}"),
            format!("SHA1 Fingerprint={colons}"),
            hex[..40].to_string(),                       // a SHA-1 length
            format!("{hex}00"),                          // too long
            colons[..colons.len() - 3].to_string(),      // 31 pairs
            format!("{}{}", &colons[..2], &colons[3..]), // one colon missing
            colons.replace(':', "-"),
            format!("{}:", colons),
            format!("sha256:sha256:{hex}"),
            format!("sha256 {hex}"),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
        let msg = FingerprintError.to_string();
        assert!(
            msg.contains("sha256:<64 hex digits>") && msg.contains("AB:CD"),
            "{msg}"
        );
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
