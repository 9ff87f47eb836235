-- Limits: who registered each file, so files per identity can be bounded.
--
-- NULL for files registered before this column existed (they count against nobody).
ALTER TABLE files ADD COLUMN registered_by TEXT;

CREATE INDEX files_by_registrant ON files (registered_by);
