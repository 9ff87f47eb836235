//! TorrentGuard's I/O-free core.
//!
//! Everything the tracker and the peer agent must agree on lives here: the manifest and its
//! canonical encoding (from which a file's id is derived), streaming chunk hashing, file-name
//! sanitising, certificate fingerprints, the tracker's REST types and the peer wire frames with
//! their codec, and the zstd chunk compression the wire negotiates. Nothing here opens a socket or a file; input comes through `std::io::Read` or
//! byte slices, so every piece can be unit- and property-tested exhaustively.

pub mod api;
pub mod bitfield;
pub mod compression;
pub mod digest;
pub mod fingerprint;
pub mod hashing;
pub mod manifest;
pub mod name;
pub mod relay;
pub mod tree;
pub mod wire;

pub use bitfield::Bitfield;
pub use digest::{Digest, HashAlgo};
pub use fingerprint::Fingerprint;
pub use manifest::{FileId, Manifest, ManifestError};
pub use name::{NameError, sanitize_name};
pub use tree::{ChunkPlace, Entry, EntryKind, TreeError, TreeLayout};
