-- Peer reputation: each reporter's latest report of each peer.
--
-- One row per (peer, reporter): a reporter that reports a peer again replaces its row, so it
-- counts once however often it reports. The score is computed from these rows by the tracker
-- (tracker-server/src/reputation.rs), so no SQL here needs to know the model. No foreign keys:
-- a report outlives the reported peer's announces (that is the point), and the file it was
-- about only explains it. Rows older than the model's window are pruned with peer expiry.

CREATE TABLE reports (
    peer        TEXT    NOT NULL,
    reporter    TEXT    NOT NULL,
    file_id     TEXT    NOT NULL CHECK (length(file_id) = 64),
    kind        TEXT    NOT NULL CHECK (kind IN ('bad_chunk', 'stall')),
    chunk       INTEGER CHECK (chunk >= 0),
    reported_at INTEGER NOT NULL,
    PRIMARY KEY (peer, reporter)
) STRICT;

CREATE INDEX reports_by_reported_at ON reports (reported_at);
