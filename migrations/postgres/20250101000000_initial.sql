-- TorrentGuard tracker schema, version 1, for PostgreSQL (the SQLite schema of the same version
-- is migrations/sqlite/20250101000000_initial.sql; keep the two in step).
--
-- Ids and fingerprints are their canonical text forms, as in SQLite. They use the "C" collation
-- so that they sort bytewise whatever the database's locale: the API's cursors rely on that
-- order, and SQLite compares the same way. Times are Unix seconds. Integers are BIGINT so that
-- they decode as the same i64 the SQLite store reads.

CREATE TABLE files (
    file_id       TEXT COLLATE "C" PRIMARY KEY CHECK (length(file_id) = 64),
    name          TEXT    NOT NULL,
    size          BIGINT  NOT NULL CHECK (size >= 0),
    chunk_size    BIGINT  NOT NULL CHECK (chunk_size > 0),
    hash_algo     TEXT    NOT NULL CHECK (hash_algo IN ('sha256', 'sha1')),
    chunk_count   BIGINT  NOT NULL CHECK (chunk_count >= 0),
    -- Every chunk digest, concatenated raw (chunk_count * digest length bytes).
    chunks        BYTEA   NOT NULL,
    file_hash     BYTEA   NOT NULL,
    registered_at BIGINT  NOT NULL
);

CREATE TABLE peers (
    fingerprint TEXT COLLATE "C" PRIMARY KEY,
    address     TEXT    NOT NULL,
    port        BIGINT  NOT NULL CHECK (port BETWEEN 1 AND 65535),
    last_seen   BIGINT  NOT NULL
);

-- Which file each peer takes part in, and which chunks of it it holds.
CREATE TABLE peer_files (
    fingerprint TEXT COLLATE "C" NOT NULL REFERENCES peers (fingerprint) ON DELETE CASCADE,
    file_id     TEXT COLLATE "C" NOT NULL REFERENCES files (file_id) ON DELETE CASCADE,
    bitfield    BYTEA   NOT NULL,
    have        BIGINT  NOT NULL CHECK (have >= 0),
    complete    BOOLEAN NOT NULL,
    last_seen   BIGINT  NOT NULL,
    PRIMARY KEY (fingerprint, file_id)
);

CREATE INDEX peer_files_by_file ON peer_files (file_id, last_seen);
CREATE INDEX peer_files_by_last_seen ON peer_files (last_seen);
