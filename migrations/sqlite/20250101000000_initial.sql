-- TorrentGuard tracker schema, version 1.
--
-- Ids and fingerprints are stored as their canonical text forms (64 lowercase hex digits;
-- "sha256:" + 64 hex) so rows are readable with the sqlite3 shell and compare in the same order
-- as the cursors the API hands out. Times are Unix seconds.

CREATE TABLE files (
    file_id       TEXT    PRIMARY KEY NOT NULL CHECK (length(file_id) = 64),
    name          TEXT    NOT NULL,
    size          INTEGER NOT NULL CHECK (size >= 0),
    chunk_size    INTEGER NOT NULL CHECK (chunk_size > 0),
    hash_algo     TEXT    NOT NULL CHECK (hash_algo IN ('sha256', 'sha1')),
    chunk_count   INTEGER NOT NULL CHECK (chunk_count >= 0),
    -- Every chunk digest, concatenated raw (chunk_count * digest length bytes): a 1M-chunk
    -- manifest is 32 MiB here against ~70 MB as JSON.
    chunks        BLOB    NOT NULL,
    file_hash     BLOB    NOT NULL,
    registered_at INTEGER NOT NULL
) STRICT;

CREATE TABLE peers (
    fingerprint TEXT    PRIMARY KEY NOT NULL,
    address     TEXT    NOT NULL,
    port        INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    last_seen   INTEGER NOT NULL
) STRICT;

-- Which file each peer takes part in, and which chunks of it it holds.
CREATE TABLE peer_files (
    fingerprint TEXT    NOT NULL REFERENCES peers (fingerprint) ON DELETE CASCADE,
    file_id     TEXT    NOT NULL REFERENCES files (file_id) ON DELETE CASCADE,
    bitfield    BLOB    NOT NULL,
    have        INTEGER NOT NULL CHECK (have >= 0),
    complete    INTEGER NOT NULL CHECK (complete IN (0, 1)),
    last_seen   INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, file_id)
) STRICT;

CREATE INDEX peer_files_by_file ON peer_files (file_id, last_seen);
CREATE INDEX peer_files_by_last_seen ON peer_files (last_seen);
