//! Request and response bodies of the tracker's REST API (JSON, prefix `/api/v1`).
//!
//! Shared by the tracker and the agent so neither defines API types of its own. Requests refuse
//! unknown fields; responses are plain data.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::tree::{Entry, MAX_ENTRIES};
use crate::{FileId, Fingerprint, Manifest, ManifestError};

pub const API_PREFIX: &str = "/api/v1";

/// Most entries of a tree that `GET /files/{id}` carries in its `files`; the rest are paged by
/// `GET /files/{id}/entries`. Keeps one answer to a few MB whatever the tree's size.
pub const MAX_INLINE_ENTRIES: u32 = 10_000;
/// Most entries in one page of `GET /files/{id}/entries`, and the page size when no `limit` is
/// given.
pub const MAX_ENTRIES_PAGE: u32 = 10_000;

/// `POST /files` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub file_id: FileId,
    pub created: bool,
}

/// One entry of `GET /files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSummary {
    pub file_id: FileId,
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub chunk_count: u32,
    pub seeders: u32,
    pub leechers: u32,
    /// Unix seconds when the manifest was registered.
    pub registered_at: i64,
    /// Regular files the share holds: 1 for a single file. Absent from trackers that predate
    /// directory shares, which only held single files.
    #[serde(default = "one")]
    pub file_count: u64,
}

fn one() -> u64 {
    1
}

/// `GET /files/{id}` answer: the manifest as registered, except that a tree of more than
/// [`MAX_INLINE_ENTRIES`] entries carries only its first ones in `files` and the cursor for the
/// rest in `entries_next`. Without a continuation the JSON is exactly the manifest's, so single
/// files are served as they were before trees existed. [`TreeAssembler`] puts a paged tree back
/// together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestResponse {
    #[serde(flatten)]
    pub manifest: Manifest,
    /// Cursor for `GET /files/{id}/entries?cursor=…`; absent when `files` is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_next: Option<String>,
}

/// A page of a list; `next` is the cursor for the following page, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// `?limit=N&cursor=C` of list endpoints. An empty value (`?cursor=&limit=`, as a form or a
/// script with unset variables sends) means the same as leaving the parameter out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub cursor: Option<String>,
    #[serde(default, deserialize_with = "empty_or_u32")]
    pub limit: Option<u32>,
}

/// An optional `u32` given as a number or a string, where the empty string is absent.
fn empty_or_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<u32>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an integer 0..=4294967295, or nothing")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(V)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            u32::try_from(v)
                .map(Some)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u32::try_from(v)
                .map(Some)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v.is_empty() {
                return Ok(None);
            }
            v.parse()
                .map(Some)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
        }
    }
    d.deserialize_any(V)
}

/// Why a paged tree from a tracker could not be put back together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    #[error("the tracker sent a continuation for a manifest that is not a directory share")]
    NotATree,
    #[error("the tracker sent more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("the tracker sent an empty page of entries with a cursor for more")]
    EmptyPage,
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Reassembles a manifest served as [`ManifestResponse`] plus pages of `GET /files/{id}/entries`,
/// then checks it against the id asked for: the tracker is not trusted with the content, and a
/// page lost, repeated or reordered changes the id.
#[derive(Debug)]
pub struct TreeAssembler {
    manifest: Manifest,
    next: Option<String>,
}

impl TreeAssembler {
    pub fn new(head: ManifestResponse) -> Result<Self, AssembleError> {
        if head.entries_next.is_some() && !head.manifest.is_tree() {
            return Err(AssembleError::NotATree);
        }
        if head.manifest.entries().len() > MAX_ENTRIES {
            return Err(AssembleError::TooManyEntries);
        }
        Ok(TreeAssembler {
            manifest: head.manifest,
            next: head.entries_next,
        })
    }

    /// The cursor of the page to fetch next, `None` once every entry is in.
    pub fn next_cursor(&self) -> Option<&str> {
        self.next.as_deref()
    }

    /// Appends the page fetched with [`Self::next_cursor`]. Bounded: a tracker cannot make the
    /// caller hold more than [`MAX_ENTRIES`] entries or loop on empty pages.
    pub fn push(&mut self, page: Page<Entry>) -> Result<(), AssembleError> {
        if page.items.is_empty() && page.next.is_some() {
            return Err(AssembleError::EmptyPage);
        }
        // `new` refused a continuation without `files`, so this is the tree's list.
        let files = self.manifest.files.get_or_insert_with(Vec::new);
        if files.len() + page.items.len() > MAX_ENTRIES {
            return Err(AssembleError::TooManyEntries);
        }
        files.extend(page.items);
        self.next = page.next;
        Ok(())
    }

    /// The whole manifest, validated and hashing to `id`.
    pub fn finish(self, id: &FileId) -> Result<Manifest, ManifestError> {
        self.manifest.verify(id)?;
        Ok(self.manifest)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnounceEvent {
    Started,
    Progress,
    Completed,
    Stopped,
}

impl AnnounceEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AnnounceEvent::Started => "started",
            AnnounceEvent::Progress => "progress",
            AnnounceEvent::Completed => "completed",
            AnnounceEvent::Stopped => "stopped",
        }
    }
}

/// `POST /announce` body. The announcing peer's identity comes from its TLS client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceRequest {
    pub file_id: FileId,
    /// The peer's listening port for peer connections.
    pub port: u16,
    pub event: AnnounceEvent,
    /// Chunks held, base64 of the wire bitfield.
    pub bitfield: String,
    /// Address to advertise instead of the connection's source address (for peers behind a
    /// proxy or with several interfaces). Loopback and unspecified addresses are refused unless
    /// the connection itself comes from loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// How this peer can be reached, as it learned it ([`Reach`]); absent until it knows, so an
    /// agent never sends it to a tracker that predates it (such a tracker refuses unknown fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reach: Option<Reach>,
}

/// A peer of a file, as the tracker lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub fingerprint: Fingerprint,
    pub address: IpAddr,
    pub port: u16,
    /// Chunks held.
    pub have: u32,
    pub complete: bool,
    /// Unix seconds of its last announce.
    pub last_seen: i64,
    /// What other peers reported about it (absent from trackers that keep no reputation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation: Option<Reputation>,
    /// How the peer said it can be reached, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reach: Option<Reach>,
}

/// A peer's standing with the tracker, built from the reports of other peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reputation {
    /// 100 for a peer nobody reported; lower as distinct reporters report it, climbing back as
    /// the reports age.
    pub score: u32,
    /// Distinct identities whose reports still count.
    pub reporters: u32,
}

/// What a downloader saw a peer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// A chunk it served failed verification.
    BadChunk,
    /// It stopped sending mid-request until the downloader gave up on it.
    Stall,
}

/// `POST /reports` body: a downloader reports a peer. The reporter's identity comes from its TLS
/// client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    pub file_id: FileId,
    /// The offending peer.
    pub peer: Fingerprint,
    pub kind: ReportKind,
    /// The chunk concerned (a bad chunk names one; a stall may).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<u32>,
}

/// `POST /announce` answer: the other peers of the file and when to announce again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceResponse {
    pub interval_secs: u64,
    pub peers: Vec<PeerInfo>,
    /// The source address and port of the announce as the tracker saw it (after any NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<std::net::SocketAddr>,
}

/// How a peer's listening port maps through the NAT in front of it, as the agent measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatMapping {
    /// Reachable inbound at its listed address and port (no NAT, a port forward, UPnP).
    Open,
    /// Not reachable inbound, but its listening port keeps its number on the way out (an
    /// endpoint-independent, port-preserving mapping): hole punching can work.
    PortPreserving,
    /// Not reachable inbound and the port seen outside is not its own (a symmetric NAT, or
    /// one that renumbers): only the relay works, unless the other side is open.
    Unpredictable,
    /// Not measured (no relay to reflect from), or not yet.
    Unknown,
}

/// What a peer announces about how it can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reach {
    /// The tracker's probe reached its listening port from outside.
    pub inbound: bool,
    pub mapping: NatMapping,
}

/// `POST /reachability`: "dial me back on this port".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReachabilityRequest {
    /// The agent's listening port.
    pub port: u16,
}

/// `POST /reachability` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachabilityResponse {
    /// The source address and port of this request as the tracker saw it.
    pub observed: std::net::SocketAddr,
    /// Whether the tracker completed a TLS handshake with the caller's own certificate at
    /// `observed.ip():port` within its probe timeout.
    pub inbound: bool,
    /// The port of this tracker's relay, on the tracker's host, if it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_port: Option<u16>,
}

/// How an introduction asks the two peers to meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntroVia {
    /// Both dial each other's public address at once from their listening ports (TCP
    /// simultaneous open).
    Punch,
    /// Both connect out to the tracker's relay with the introduction's token.
    Relay,
}

/// `POST /introductions`: a downloader asks to meet a peer of a file's swarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntroduceRequest {
    pub file_id: FileId,
    /// The peer to meet (a live member of the file's swarm).
    pub peer: Fingerprint,
    /// The asker's listening port, from which it will punch.
    pub port: u16,
    pub via: IntroVia,
}

/// One introduction, as each side sees it: `peer`, `address` and `port` are the OTHER side's
/// (for the downloader, the seeder's public endpoint; for the seeder, the downloader's).
/// `start_in_ms` is counted from when the answer was written, so clocks need not agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Introduction {
    /// 64 lowercase hex characters (32 random bytes): the relay pairs the two sides by it.
    pub token: String,
    pub file_id: FileId,
    pub peer: Fingerprint,
    pub address: IpAddr,
    pub port: u16,
    pub via: IntroVia,
    pub start_in_ms: u64,
    /// The port of the tracker's relay, on the tracker's host (set when `via` is `relay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_port: Option<u16>,
}

/// `GET /introductions?wait_secs=N` query: wait up to N seconds (at most 30) for one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntroductionsQuery {
    #[serde(default)]
    pub wait_secs: Option<u32>,
}

/// `GET /introductions` answer: the introductions waiting for the caller (each given once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Introductions {
    pub items: Vec<Introduction>,
}

/// `GET /files/{id}/peers` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePeers {
    pub file_id: FileId,
    pub peers: Vec<PeerInfo>,
}

/// One entry of `GET /peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSummary {
    pub fingerprint: Fingerprint,
    pub address: IpAddr,
    pub port: u16,
    pub files: Vec<FileId>,
    pub last_seen: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation: Option<Reputation>,
    /// How the peer said it can be reached, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reach: Option<Reach>,
}

/// `GET /healthz` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub fingerprint: Fingerprint,
}

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HashAlgo;

    /// A tree of `n` one-byte files (a chunk each) in canonical order.
    fn tree(n: usize) -> Manifest {
        let entries: Vec<Entry> = (0..n)
            .map(|i| Entry::file(format!("f{i:07}"), 1, 0o644))
            .collect();
        let chunks = (0..n)
            .map(|i| HashAlgo::Sha256.digest(&[(i % 251) as u8]))
            .collect();
        Manifest::tree("t", 16 * 1024, HashAlgo::Sha256, entries, chunks)
    }

    /// What the tracker does: the first `inline` entries, the rest in pages of `page`.
    fn served(m: &Manifest, inline: usize, page: usize) -> (ManifestResponse, Vec<Page<Entry>>) {
        let all = m.entries();
        let mut head = m.clone();
        if m.is_tree() {
            head.files = Some(all[..inline.min(all.len())].to_vec());
        }
        let rest: Vec<&[Entry]> = all.get(inline..).unwrap_or(&[]).chunks(page).collect();
        let pages = rest
            .iter()
            .enumerate()
            .map(|(i, items)| Page {
                items: items.to_vec(),
                next: (i + 1 < rest.len()).then(|| format!("c{}", i + 1)),
            })
            .collect();
        let entries_next = (!rest.is_empty()).then(|| "c0".to_string());
        (
            ManifestResponse {
                manifest: head,
                entries_next,
            },
            pages,
        )
    }

    fn assemble(
        head: ManifestResponse,
        pages: Vec<Page<Entry>>,
    ) -> Result<Manifest, AssembleError> {
        let mut a = TreeAssembler::new(head)?;
        let mut pages = pages.into_iter();
        while a.next_cursor().is_some() {
            a.push(pages.next().expect("a page for every cursor"))?;
        }
        let id = a.manifest.file_id();
        Ok(a.finish(&id)?)
    }

    #[test]
    fn a_paged_tree_reassembles_and_verifies() {
        let m = tree(25);
        let (head, pages) = served(&m, 10, 4);
        assert_eq!(pages.len(), 4);
        let json = serde_json::to_string(&head).unwrap();
        assert!(json.contains(r#""entries_next":"c0""#), "{json}");
        let head: ManifestResponse = serde_json::from_str(&json).unwrap();
        let mut a = TreeAssembler::new(head).unwrap();
        for p in pages {
            assert!(a.next_cursor().is_some());
            a.push(p).unwrap();
        }
        assert_eq!(a.next_cursor(), None);
        assert_eq!(a.finish(&m.file_id()).unwrap(), m);
    }

    #[test]
    fn a_lost_or_repeated_page_fails_the_id_check() {
        let m = tree(25);
        let (head, mut pages) = served(&m, 10, 4);
        pages.remove(1);
        let mut a = TreeAssembler::new(head.clone()).unwrap();
        for p in pages {
            a.push(p).unwrap();
        }
        assert!(a.finish(&m.file_id()).is_err());
        let (_, mut pages) = served(&m, 10, 4);
        pages.insert(1, pages[1].clone());
        let mut a = TreeAssembler::new(head).unwrap();
        for p in pages {
            a.push(p).unwrap();
        }
        assert!(a.finish(&m.file_id()).is_err());
    }

    #[test]
    fn hostile_continuations_are_refused() {
        let single = crate::manifest::tests::manifest_for("s", b"x", 16384, HashAlgo::Sha256);
        let head = ManifestResponse {
            manifest: single,
            entries_next: Some("0".into()),
        };
        assert_eq!(
            TreeAssembler::new(head).unwrap_err(),
            AssembleError::NotATree
        );
        let (head, _) = served(&tree(3), 1, 1);
        let mut a = TreeAssembler::new(head).unwrap();
        let empty = Page {
            items: vec![],
            next: Some("again".into()),
        };
        assert_eq!(a.push(empty).unwrap_err(), AssembleError::EmptyPage);
        let huge = Page {
            items: vec![Entry::file("x", 0, 0o644); MAX_ENTRIES],
            next: None,
        };
        assert_eq!(a.push(huge).unwrap_err(), AssembleError::TooManyEntries);
    }

    #[test]
    fn a_complete_manifest_is_served_as_plain_manifest_json() {
        let single = crate::manifest::tests::manifest_for("s", b"x", 16384, HashAlgo::Sha256);
        let small = tree(3);
        for m in [single, small] {
            let (head, pages) = served(&m, 10, 4);
            assert!(pages.is_empty());
            assert_eq!(
                serde_json::to_string(&head).unwrap(),
                serde_json::to_string(&m).unwrap()
            );
            assert_eq!(assemble(head, pages).unwrap(), m);
        }
    }

    #[test]
    fn file_summaries_from_older_trackers_count_one_file() {
        let id = "a".repeat(64);
        let old = format!(
            r#"{{"file_id":"{id}","name":"n","size":1,"chunk_size":16384,"chunk_count":1,"seeders":0,"leechers":0,"registered_at":5}}"#
        );
        let s: FileSummary = serde_json::from_str(&old).unwrap();
        assert_eq!(s.file_count, 1);
    }

    #[test]
    fn page_query_limit_takes_numbers_strings_and_nothing() {
        let q = |json: &str| serde_json::from_str::<PageQuery>(json);
        assert_eq!(q(r#"{"limit":5}"#).unwrap().limit, Some(5));
        assert_eq!(q(r#"{"limit":"5"}"#).unwrap().limit, Some(5));
        assert_eq!(q(r#"{"limit":""}"#).unwrap().limit, None);
        assert_eq!(q(r#"{"limit":null}"#).unwrap().limit, None);
        assert_eq!(q(r#"{}"#).unwrap().limit, None);
        assert!(q(r#"{"limit":"x"}"#).is_err());
        assert!(q(r#"{"limit":-1}"#).is_err());
        assert!(q(r#"{"limit":4294967296}"#).is_err());
    }

    #[test]
    fn announce_refuses_unknown_fields_and_events() {
        let id = "a".repeat(64);
        let ok = format!(r#"{{"file_id":"{id}","port":1,"event":"started","bitfield":""}}"#);
        let req: AnnounceRequest = serde_json::from_str(&ok).unwrap();
        assert_eq!(req.event, AnnounceEvent::Started);
        assert!(req.address.is_none());
        let extra = format!(
            r#"{{"file_id":"{id}","port":1,"event":"started","bitfield":"","fingerprint":"x"}}"#
        );
        assert!(serde_json::from_str::<AnnounceRequest>(&extra).is_err());
        let bad_event = format!(r#"{{"file_id":"{id}","port":1,"event":"paused","bitfield":""}}"#);
        assert!(serde_json::from_str::<AnnounceRequest>(&bad_event).is_err());
        let bad_port =
            format!(r#"{{"file_id":"{id}","port":70000,"event":"started","bitfield":""}}"#);
        assert!(serde_json::from_str::<AnnounceRequest>(&bad_port).is_err());
    }
}
