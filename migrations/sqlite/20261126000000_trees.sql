-- Directory shares (trees): a manifest with a list of entries.
--
-- A tree's entries are kept one row each so that a page of them is one index range scan, keyed
-- by a small integer tree number rather than the 64-character file id: at the 1 Mi entry bound
-- that saves ~64 MiB per tree. A file without a `trees` row is a single-file manifest.

-- Regular files the share holds (1 for a single file), for listings.
ALTER TABLE files ADD COLUMN file_count INTEGER NOT NULL DEFAULT 1 CHECK (file_count >= 0);

CREATE TABLE trees (
    tree_no     INTEGER PRIMARY KEY,
    file_id     TEXT    NOT NULL UNIQUE REFERENCES files (file_id) ON DELETE CASCADE,
    entry_count INTEGER NOT NULL CHECK (entry_count >= 0)
) STRICT;

-- Entry `idx` of a tree, in the manifest's (canonical) order.
CREATE TABLE tree_entries (
    tree_no INTEGER NOT NULL REFERENCES trees (tree_no) ON DELETE CASCADE,
    idx     INTEGER NOT NULL CHECK (idx >= 0),
    path    TEXT    NOT NULL,
    is_dir  INTEGER NOT NULL CHECK (is_dir IN (0, 1)),
    size    INTEGER NOT NULL CHECK (size >= 0),
    mode    INTEGER NOT NULL CHECK (mode BETWEEN 0 AND 511),
    PRIMARY KEY (tree_no, idx)
) STRICT, WITHOUT ROWID;
