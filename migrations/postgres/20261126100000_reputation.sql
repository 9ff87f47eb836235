-- Peer reputation: each reporter's latest report of each peer (the twin of
-- migrations/sqlite/20261126100000_reputation.sql; see there for why there are no foreign keys).

CREATE TABLE reports (
    peer        TEXT    NOT NULL,
    reporter    TEXT    NOT NULL,
    file_id     TEXT    NOT NULL CHECK (length(file_id) = 64),
    kind        TEXT    NOT NULL CHECK (kind IN ('bad_chunk', 'stall')),
    chunk       BIGINT  CHECK (chunk >= 0),
    reported_at BIGINT  NOT NULL,
    PRIMARY KEY (peer, reporter)
);

CREATE INDEX reports_by_reported_at ON reports (reported_at);
