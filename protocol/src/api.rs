//! Request and response bodies of the tracker's REST API (JSON, prefix `/api/v1`).
//!
//! Shared by the tracker and the agent so neither defines API types of its own. Requests refuse
//! unknown fields; responses are plain data.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{FileId, Fingerprint};

pub const API_PREFIX: &str = "/api/v1";

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
}

/// `POST /announce` answer: the other peers of the file and when to announce again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceResponse {
    pub interval_secs: u64,
    pub peers: Vec<PeerInfo>,
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
