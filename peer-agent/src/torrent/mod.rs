//! Per-share state and the swarm, without sockets: what is shared ([`SharedFile`]), which chunk
//! is where during a download ([`picker`]), the download's bookkeeping, and where chunks live
//! ([`storage`]). Networking (`peer/`) and the tracker (`session`) act on this state; this
//! module never touches either.

pub mod download;
pub mod ordered_hash;
pub mod output;
pub mod picker;
pub mod reuse;
pub mod share;
pub mod storage;
pub mod store;
pub mod swarm;
pub mod tree_store;
pub mod verify;
pub mod window;

pub use share::{ClaimsGuard, SharedFile, SwarmDirectory, SwarmLookupError, WithdrawReason};
pub use storage::{ChunkStorage, SingleFile};
