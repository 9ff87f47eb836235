-- The daemon's state (`torrentguard daemon`), in <data-dir>/daemon.db.
--
-- Ids and fingerprints in their canonical text forms; times are Unix seconds. A transfer is one
-- share or one download of one file id; the pair (kind, file_id) is its key in the API.

CREATE TABLE transfers (
    kind          TEXT    NOT NULL CHECK (kind IN ('share', 'download')),
    file_id       TEXT    NOT NULL CHECK (length(file_id) = 64),
    name          TEXT    NOT NULL,
    size          INTEGER NOT NULL CHECK (size >= 0),
    -- A share: the path given (a file or folder). A download: the output directory.
    path          TEXT    NOT NULL,
    -- What the user asked for: 'active' (run it) or 'paused'. Where it got is `state`.
    wanted        TEXT    NOT NULL CHECK (wanted IN ('active', 'paused')),
    state         TEXT    NOT NULL,
    error         TEXT,
    bytes_done    INTEGER NOT NULL DEFAULT 0,
    uploaded      INTEGER NOT NULL DEFAULT 0,
    tracker_url   TEXT    NOT NULL,
    tracker_fp    TEXT,
    swarm_token   TEXT,
    -- A download's options (force, only) and a share's (name, follow_symlinks), as JSON.
    options       TEXT    NOT NULL DEFAULT '{}',
    -- A share: its manifest as JSON and what each source path looked like when hashed
    -- (size and modification time), so a restart re-hashes only what changed.
    manifest      TEXT,
    sources       TEXT,
    added_at      INTEGER NOT NULL,
    completed_at  INTEGER,
    PRIMARY KEY (kind, file_id)
) STRICT;

-- Every peer this daemon has exchanged chunks with, and how it behaved.
CREATE TABLE peers (
    fingerprint    TEXT    PRIMARY KEY NOT NULL,
    address        TEXT,
    first_seen     INTEGER NOT NULL,
    last_seen      INTEGER NOT NULL,
    -- Chunk bytes received from it, counted from the progress events' per-peer totals.
    bytes_received INTEGER NOT NULL DEFAULT 0,
    chunks_failed  INTEGER NOT NULL DEFAULT 0,
    bans           INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT
) STRICT;
