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

/// `?cursor=…&limit=…` of list endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub cursor: Option<String>,
    pub limit: Option<u32>,
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
