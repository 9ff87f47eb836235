//! Share codes: one copy-pasteable string (`tg1:` + base32) that carries everything `get`
//! needs: the file id, the tracker URL(s) with each tracker's fingerprint, and a private swarm's
//! token.
//!
//! The base32 text (RFC 4648 alphabet, lowercase, no padding) encodes a binary payload followed
//! by the first four bytes of its SHA-256, so a character changed or lost when copying is
//! caught rather than sent to a tracker:
//!
//! ```text
//! version 1: version u8 (1) | file id [32] | fingerprint flag u8 (0|1) [+ 32 bytes]
//!   | tracker count u8 | per tracker: length u16 BE + UTF-8 https:// URL
//!   | token flag u8 (0|1) [+ length u16 BE + UTF-8 token] | checksum [4]
//! version 2: version u8 (2) | file id [32]
//!   | tracker count u8 | per tracker: length u16 BE + UTF-8 https:// URL
//!                                    + fingerprint flag u8 (0|1) [+ 32 bytes]
//!   | token flag u8 (0|1) [+ length u16 BE + UTF-8 token] | checksum [4]
//! ```
//!
//! Version 1 has one fingerprint for all its trackers (replicas serving one certificate);
//! version 2 one per tracker. A code is written as version 1 whenever its trackers share one
//! pin (or none), so older agents read every code they could act on.
//!
//! The layout is parsed from the front before the checksum is checked, so a code cut short
//! reads as "incomplete" rather than as a checksum mismatch.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use data_encoding::{Encoding, Specification};
use torrentguard_protocol::{FileId, Fingerprint, HashAlgo};

use crate::agent::PinnedUrl;

/// What every share code starts with (its letters in any case).
pub const PREFIX: &str = "tg1:";

/// The payload layouts this build writes and reads: one pin for all trackers, one each.
const VERSION_SHARED_PIN: u8 = 1;
const VERSION: u8 = 2;
const CHECKSUM_LEN: usize = 4;
/// Bounds that keep a code pasteable (and a hostile one cheap to refuse).
pub const MAX_TRACKERS: usize = 8;
pub const MAX_URL_LEN: usize = 512;
pub const MAX_TOKEN_LEN: usize = 512;
/// Longest code text accepted, prefix excluded: the largest payload the bounds above allow.
const MAX_TEXT_LEN: usize =
    (1 + 32 + 1 + MAX_TRACKERS * (2 + MAX_URL_LEN + 33) + 3 + MAX_TOKEN_LEN + CHECKSUM_LEN)
        .div_ceil(5)
        * 8;

/// Everything `get` needs to fetch one share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareCode {
    pub file_id: FileId,
    /// Tried in order until one answers, each with its pin (none: trusted on first use); at
    /// least one.
    pub trackers: Vec<PinnedUrl>,
    pub swarm_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareCodeError {
    #[error("not a share code: share codes start with \"{PREFIX}\"")]
    WrongPrefix,
    #[error("the share code is incomplete: was it cut when copied?")]
    Incomplete,
    #[error("the share code's checksum does not match: a character was changed or lost")]
    Checksum,
    #[error(
        "the share code has {character:?} at position {position}, which no share code contains \
         (letters a-z and digits 2-7 only): was it mistyped?"
    )]
    BadCharacter { character: char, position: usize },
    #[error(
        "the share code is of version {0}, this torrentguard reads version {VERSION}: a newer \
         torrentguard made it"
    )]
    UnknownVersion(u8),
    #[error("the share code's tracker URL {0:?} is not an https:// URL")]
    BadUrl(String),
    #[error("the share code names no tracker")]
    NoTracker,
    #[error(
        "the share code is too long ({0} characters, at most {MAX_TEXT_LEN}): it is not one \
         torrentguard made"
    )]
    Oversize(usize),
    #[error("the share code is malformed: {0}")]
    Malformed(&'static str),
}

/// RFC 4648 base32, lowercase, no padding; decoding takes either case (input is lowercased).
static BASE32: LazyLock<Encoding> = LazyLock::new(|| base32(true));

/// The same, reading past bits set after the last whole byte: a code cut short has them, and
/// must read as incomplete rather than as altered.
static BASE32_LENIENT: LazyLock<Encoding> = LazyLock::new(|| base32(false));

fn base32(check_trailing_bits: bool) -> Encoding {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.check_trailing_bits = check_trailing_bits;
    // The specification is a constant that data-encoding documents as valid (its own
    // BASE32_NOPAD, in lowercase); a panic here would show in every test.
    spec.encoding().expect("a valid base32 specification")
}

impl ShareCode {
    /// Whether this code stays within the bounds a decoder accepts (a code built from user
    /// input, e.g. a very long URL, may not): check before printing one.
    pub fn check(&self) -> Result<(), ShareCodeError> {
        if self.trackers.is_empty() {
            return Err(ShareCodeError::NoTracker);
        }
        if self.trackers.len() > MAX_TRACKERS {
            return Err(ShareCodeError::Malformed("more than 8 tracker URLs"));
        }
        for t in &self.trackers {
            check_url(&t.url)?;
        }
        if self
            .swarm_token
            .as_ref()
            .is_some_and(|t| t.len() > MAX_TOKEN_LEN)
        {
            return Err(ShareCodeError::Malformed("the swarm token is too long"));
        }
        Ok(())
    }

    /// The trackers' URLs, space-separated, each with its pin (as `--tracker` takes them).
    pub fn tracker_list(&self) -> String {
        let urls: Vec<String> = self.trackers.iter().map(PinnedUrl::to_string).collect();
        urls.join(" ")
    }

    /// The one pin of every tracker, when they share one: version 1 can then carry it.
    fn shared_pin(&self) -> Option<Option<Fingerprint>> {
        let first = self.trackers.first().and_then(|t| t.fingerprint);
        let shared = self.trackers.iter().all(|t| t.fingerprint == first);
        shared.then_some(first)
    }

    fn payload(&self) -> Vec<u8> {
        let shared = self.shared_pin();
        let mut p = vec![shared.map_or(VERSION, |_| VERSION_SHARED_PIN)];
        p.extend_from_slice(self.file_id.as_bytes());
        if let Some(pin) = shared {
            push_pin(&mut p, pin);
        }
        // Lengths are saturated, not wrapped: `check` refuses what does not fit, and a code
        // that was not checked fails to decode rather than decoding as something else.
        p.push(u8::try_from(self.trackers.len()).unwrap_or(u8::MAX));
        for t in &self.trackers {
            push_string(&mut p, &t.url);
            if shared.is_none() {
                push_pin(&mut p, t.fingerprint);
            }
        }
        match &self.swarm_token {
            Some(t) => {
                p.push(1);
                push_string(&mut p, t);
            }
            None => p.push(0),
        }
        p
    }
}

fn push_pin(p: &mut Vec<u8>, pin: Option<Fingerprint>) {
    match pin {
        Some(fp) => {
            p.push(1);
            p.extend_from_slice(fp.as_bytes());
        }
        None => p.push(0),
    }
}

fn push_string(p: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

fn checksum(payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let d = HashAlgo::Sha256.digest(payload);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&d.as_bytes()[..CHECKSUM_LEN]);
    out
}

fn check_url(url: &str) -> Result<(), ShareCodeError> {
    let https = url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    if !https || url.len() <= 8 || url.len() > MAX_URL_LEN || url.chars().any(char::is_whitespace) {
        return Err(ShareCodeError::BadUrl(url.to_string()));
    }
    Ok(())
}

impl fmt::Display for ShareCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = self.payload();
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        write!(f, "{PREFIX}{}", BASE32.encode(&bytes))
    }
}

impl FromStr for ShareCode {
    type Err = ShareCodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let body = match s.get(..PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(PREFIX) => &s[PREFIX.len()..],
            _ => return Err(ShareCodeError::WrongPrefix),
        };
        if body.len() > MAX_TEXT_LEN {
            return Err(ShareCodeError::Oversize(body.len()));
        }
        let lower = body.to_ascii_lowercase();
        let bytes = decode_base32(&lower)?;
        match bytes.first() {
            None => return Err(ShareCodeError::Incomplete),
            Some(&v) if v != VERSION && v != VERSION_SHARED_PIN => {
                return Err(ShareCodeError::UnknownVersion(v));
            }
            Some(_) => {}
        }
        let raw = RawCode::parse(&bytes)?;
        // Whole, so bits past the last byte are zero in every code written: set, one changed.
        let trailing_bits_set = BASE32.decode(lower.as_bytes()).is_err();
        if trailing_bits_set || checksum(&bytes[..raw.payload_len]) != bytes[raw.payload_len..] {
            return Err(ShareCodeError::Checksum);
        }
        raw.into_code()
    }
}

fn decode_base32(body: &str) -> Result<Vec<u8>, ShareCodeError> {
    BASE32_LENIENT
        .decode(body.as_bytes())
        .map_err(|e| match e.kind {
            data_encoding::DecodeKind::Length => ShareCodeError::Incomplete,
            _ => ShareCodeError::BadCharacter {
                character: body[e.position..].chars().next().unwrap_or('?'),
                position: PREFIX.len() + e.position + 1,
            },
        })
}

/// The fields of a payload as bytes, before the checksum says they can be trusted.
struct RawCode<'a> {
    file_id: [u8; 32],
    /// Each tracker's URL and pin.
    trackers: Vec<(&'a [u8], Option<[u8; 32]>)>,
    token: Option<&'a [u8]>,
    payload_len: usize,
}

/// Reads a payload from the front; running out of bytes means the code was cut.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ShareCodeError> {
        let end = self.at.checked_add(n).ok_or(ShareCodeError::Incomplete)?;
        let out = self
            .bytes
            .get(self.at..end)
            .ok_or(ShareCodeError::Incomplete)?;
        self.at = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, ShareCodeError> {
        Ok(self.take(1)?[0])
    }

    fn array(&mut self) -> Result<[u8; 32], ShareCodeError> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.take(32)?);
        Ok(out)
    }

    fn string(&mut self) -> Result<&'a [u8], ShareCodeError> {
        let len = self.take(2)?;
        self.take(usize::from(u16::from_be_bytes([len[0], len[1]])))
    }

    fn pin(&mut self) -> Result<Option<[u8; 32]>, ShareCodeError> {
        Ok(if self.flag()? {
            Some(self.array()?)
        } else {
            None
        })
    }

    fn flag(&mut self) -> Result<bool, ShareCodeError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ShareCodeError::Checksum),
        }
    }
}

impl<'a> RawCode<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, ShareCodeError> {
        let mut r = Reader { bytes, at: 1 };
        let file_id = r.array()?;
        let shared_pin = match bytes.first() {
            Some(&VERSION_SHARED_PIN) => Some(r.pin()?),
            _ => None,
        };
        let count = r.byte()?;
        let trackers = (0..count)
            .map(|_| {
                let url = r.string()?;
                let pin = match shared_pin {
                    Some(pin) => pin,
                    None => r.pin()?,
                };
                Ok((url, pin))
            })
            .collect::<Result<Vec<_>, ShareCodeError>>()?;
        let token = if r.flag()? { Some(r.string()?) } else { None };
        let payload_len = r.at;
        r.take(CHECKSUM_LEN)?;
        if r.at != bytes.len() {
            // More than the layout holds: not what was written.
            return Err(ShareCodeError::Checksum);
        }
        Ok(RawCode {
            file_id,
            trackers,
            token,
            payload_len,
        })
    }

    fn into_code(self) -> Result<ShareCode, ShareCodeError> {
        let text = |b: &[u8], what| std::str::from_utf8(b).map(str::to_string).map_err(|_| what);
        let trackers = self
            .trackers
            .iter()
            .map(|(u, pin)| {
                Ok(PinnedUrl {
                    url: text(u, ShareCodeError::Malformed("a tracker URL is not UTF-8"))?,
                    fingerprint: pin.map(Fingerprint::from_bytes),
                })
            })
            .collect::<Result<Vec<_>, ShareCodeError>>()?;
        let swarm_token = self
            .token
            .map(|t| text(t, ShareCodeError::Malformed("the swarm token is not UTF-8")))
            .transpose()?;
        let code = ShareCode {
            file_id: FileId(self.file_id),
            trackers,
            swarm_token,
        };
        code.check()?;
        Ok(code)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pinned(url: &str, pin: Option<u8>) -> PinnedUrl {
        PinnedUrl {
            url: url.into(),
            fingerprint: pin.map(|b| Fingerprint::from_bytes([b; 32])),
        }
    }

    fn sample() -> ShareCode {
        ShareCode {
            file_id: FileId([7; 32]),
            trackers: vec![
                pinned("https://tracker.lan:8443", Some(9)),
                pinned("https://10.0.0.2:8443/", Some(9)),
            ],
            swarm_token: Some("s3cret token".into()),
        }
    }

    /// Trackers with a pin each (and one without).
    fn sample_v2() -> ShareCode {
        ShareCode {
            trackers: vec![
                pinned("https://a.lan:8443", Some(1)),
                pinned("https://b.lan:8443", Some(2)),
                pinned("https://c.lan:8443", None),
            ],
            ..sample()
        }
    }

    /// A code of any payload bytes, with a correct checksum.
    fn code_of(payload: &[u8]) -> String {
        let mut b = payload.to_vec();
        b.extend_from_slice(&checksum(payload));
        format!("{PREFIX}{}", BASE32.encode(&b))
    }

    #[test]
    fn round_trips_and_reads_any_case_and_surrounding_whitespace() {
        let c = sample();
        let text = c.to_string();
        assert!(text.starts_with("tg1:"), "{text}");
        assert!(
            text[4..]
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
        );
        assert_eq!(text.parse::<ShareCode>(), Ok(c.clone()));
        assert_eq!(format!("  {}\n", text.to_uppercase()).parse(), Ok(c));
        let bare = ShareCode {
            swarm_token: None,
            trackers: vec![pinned("https://t", None)],
            ..sample()
        };
        assert_eq!(bare.to_string().parse(), Ok(bare));
    }

    /// Several trackers, each with its own pin, come back each with its own; trackers that
    /// share one pin are written in the layout older agents read.
    #[test]
    fn several_trackers_round_trip_each_with_its_pin() {
        let c = sample_v2();
        let text = c.to_string();
        assert_eq!(text.parse::<ShareCode>(), Ok(c.clone()));
        assert_eq!(decoded_version(&text), VERSION);
        assert_eq!(
            c.tracker_list(),
            format!(
                "https://a.lan:8443#{} https://b.lan:8443#{} https://c.lan:8443",
                Fingerprint::from_bytes([1; 32]),
                Fingerprint::from_bytes([2; 32])
            )
        );
        assert_eq!(decoded_version(&sample().to_string()), VERSION_SHARED_PIN);
    }

    /// A version 1 code (one fingerprint for every tracker) made before per-tracker pins.
    #[test]
    fn an_old_single_pin_code_still_decodes() {
        let mut p = vec![1];
        p.extend_from_slice(&[3; 32]);
        p.push(1);
        p.extend_from_slice(&[4; 32]);
        p.push(2);
        push_string(&mut p, "https://one:1");
        push_string(&mut p, "https://two:2");
        p.push(0);
        let code: ShareCode = code_of(&p).parse().unwrap();
        assert_eq!(code.file_id, FileId([3; 32]));
        assert_eq!(
            code.trackers,
            vec![
                pinned("https://one:1", Some(4)),
                pinned("https://two:2", Some(4))
            ]
        );
    }

    fn decoded_version(text: &str) -> u8 {
        BASE32.decode(&text.as_bytes()[PREFIX.len()..]).unwrap()[0]
    }

    #[test]
    fn every_single_character_change_is_refused() {
        let text = sample().to_string();
        let alphabet = "abcdefghijklmnopqrstuvwxyz234567";
        let mut tried = 0;
        for pos in PREFIX.len()..text.len() {
            for c in alphabet
                .chars()
                .filter(|&c| text.as_bytes()[pos] != c as u8)
            {
                let mut altered = text.clone();
                altered.replace_range(pos..pos + 1, &c.to_string());
                let got = altered.parse::<ShareCode>();
                assert!(got.is_err(), "{altered} (position {pos}) decoded: {got:?}");
                tried += 1;
            }
        }
        assert!(tried > 31 * 100, "{tried}");
    }

    #[test]
    fn a_changed_character_reads_as_a_checksum_mismatch() {
        let text = sample().to_string();
        // A character of the file id: the layout still parses, the checksum cannot match.
        let pos = PREFIX.len() + 10;
        let mut altered = text.clone();
        let c = if &text[pos..=pos] == "a" { "b" } else { "a" };
        altered.replace_range(pos..=pos, c);
        let err = altered.parse::<ShareCode>().unwrap_err();
        assert_eq!(err, ShareCodeError::Checksum);
        assert_eq!(
            err.to_string(),
            "the share code's checksum does not match: a character was changed or lost"
        );
    }

    #[test]
    fn every_truncation_reads_as_incomplete() {
        let text = sample().to_string();
        for end in PREFIX.len()..text.len() {
            assert_eq!(
                text[..end].parse::<ShareCode>(),
                Err(ShareCodeError::Incomplete),
                "cut at {end}"
            );
        }
        assert_eq!(
            ShareCodeError::Incomplete.to_string(),
            "the share code is incomplete: was it cut when copied?"
        );
    }

    #[test]
    fn a_lost_character_inside_is_refused() {
        let text = sample().to_string();
        for pos in PREFIX.len()..text.len() {
            let mut lost = text.clone();
            lost.remove(pos);
            assert!(lost.parse::<ShareCode>().is_err(), "without position {pos}");
        }
    }

    #[test]
    fn refused_inputs_each_say_why() {
        let text = sample().to_string();
        assert_eq!(
            "3f2a".parse::<ShareCode>(),
            Err(ShareCodeError::WrongPrefix)
        );
        assert_eq!(
            text.replacen("tg1:", "tg:", 1).parse::<ShareCode>(),
            Err(ShareCodeError::WrongPrefix)
        );
        let mut typo = text.clone();
        typo.replace_range(8..9, "1");
        assert_eq!(
            typo.parse::<ShareCode>(),
            Err(ShareCodeError::BadCharacter {
                character: '1',
                position: 9
            })
        );
        let long = format!("{PREFIX}{}", "a".repeat(MAX_TEXT_LEN + 8));
        assert_eq!(
            long.parse::<ShareCode>(),
            Err(ShareCodeError::Oversize(MAX_TEXT_LEN + 8))
        );
        assert_eq!("tg1:".parse::<ShareCode>(), Err(ShareCodeError::Incomplete));
    }

    /// A payload: version, id, no fingerprint, the trackers, no token.
    fn payload(version: u8, trackers: &[&str]) -> Vec<u8> {
        let mut p = vec![version];
        p.extend_from_slice(&[1; 32]);
        p.push(0);
        p.push(trackers.len() as u8);
        for t in trackers {
            push_string(&mut p, t);
        }
        p.push(0);
        p
    }

    #[test]
    fn unknown_versions_plain_http_and_no_tracker_are_refused() {
        assert_eq!(
            code_of(&payload(3, &["https://t"])).parse::<ShareCode>(),
            Err(ShareCodeError::UnknownVersion(3))
        );
        assert_eq!(
            code_of(&payload(1, &["http://t:80"])).parse::<ShareCode>(),
            Err(ShareCodeError::BadUrl("http://t:80".into()))
        );
        assert_eq!(
            code_of(&payload(1, &[])).parse::<ShareCode>(),
            Err(ShareCodeError::NoTracker)
        );
        assert!(
            code_of(&payload(1, &["https://t"]))
                .parse::<ShareCode>()
                .is_ok()
        );
        let mut bad_utf8 = payload(1, &["https://t"]);
        let at = bad_utf8.len() - 2;
        bad_utf8[at] = 0xff;
        assert!(matches!(
            code_of(&bad_utf8).parse::<ShareCode>(),
            Err(ShareCodeError::Malformed(_))
        ));
    }

    #[test]
    fn check_refuses_what_a_decoder_would() {
        let mut c = sample();
        assert_eq!(c.check(), Ok(()));
        c.trackers = vec![pinned("http://x", None)];
        assert_eq!(c.check(), Err(ShareCodeError::BadUrl("http://x".into())));
        c.trackers = vec![];
        assert_eq!(c.check(), Err(ShareCodeError::NoTracker));
        c.trackers = vec![pinned(
            &format!("https://{}", "a".repeat(MAX_URL_LEN)),
            None,
        )];
        assert!(c.check().is_err());
    }

    fn any_code() -> impl Strategy<Value = ShareCode> {
        (
            any::<[u8; 32]>(),
            proptest::option::of(any::<[u8; 32]>()),
            proptest::collection::vec(
                (
                    "https://[a-z0-9.-]{1,40}(:[0-9]{1,5})?(/[a-z]{0,8})?",
                    any::<bool>(),
                ),
                1..=MAX_TRACKERS,
            ),
            proptest::option::of("\\PC{0,60}"),
        )
            // Each tracker has the shared pin, or (when the bool says so) a pin of its own.
            .prop_map(|(id, fp, trackers, token)| ShareCode {
                file_id: FileId(id),
                trackers: trackers
                    .into_iter()
                    .enumerate()
                    .map(|(i, (url, own))| PinnedUrl {
                        url,
                        fingerprint: if own {
                            Some(Fingerprint::from_bytes([i as u8; 32]))
                        } else {
                            fp.map(Fingerprint::from_bytes)
                        },
                    })
                    .collect(),
                swarm_token: token,
            })
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity(code in any_code()) {
            prop_assert_eq!(code.to_string().parse::<ShareCode>(), Ok(code));
        }

        #[test]
        fn arbitrary_text_never_panics(s in "(tg1:)?\\PC{0,300}") {
            let _ = s.parse::<ShareCode>();
        }
    }
}
