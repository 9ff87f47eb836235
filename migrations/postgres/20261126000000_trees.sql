-- Directory shares (trees), for PostgreSQL (as migrations/sqlite/20261126000000_trees.sql): a
-- manifest with a list of entries, one row each, keyed by a small tree number. A file without a
-- `trees` row is a single-file manifest. Kept a separate file, as in SQLite, so that both
-- folders hold the same versions and a port of a later SQLite migration lands beside its twin.

-- Regular files the share holds (1 for a single file), for listings.
ALTER TABLE files ADD COLUMN file_count BIGINT NOT NULL DEFAULT 1 CHECK (file_count >= 0);

CREATE TABLE trees (
    tree_no     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    file_id     TEXT COLLATE "C" NOT NULL UNIQUE REFERENCES files (file_id) ON DELETE CASCADE,
    entry_count BIGINT  NOT NULL CHECK (entry_count >= 0)
);

-- Entry `idx` of a tree, in the manifest's (canonical) order.
CREATE TABLE tree_entries (
    tree_no BIGINT  NOT NULL REFERENCES trees (tree_no) ON DELETE CASCADE,
    idx     BIGINT  NOT NULL CHECK (idx >= 0),
    path    TEXT    NOT NULL,
    is_dir  BOOLEAN NOT NULL,
    size    BIGINT  NOT NULL CHECK (size >= 0),
    mode    BIGINT  NOT NULL CHECK (mode BETWEEN 0 AND 511),
    PRIMARY KEY (tree_no, idx)
);
