-- Erasures must survive a backup restore. A restore brings back everyone erased after
-- the backup was taken; `newsletter reapply-erasures` erases them again from this
-- journal, read from the database as it was before the restore (see the README,
-- "Backups and erasure").
--
-- No personal data: the internal id of the erased subscriber row, when that row was
-- created (so that a restored database that has since given the same id to someone
-- else is never touched: both must match), and when it was erased. Rows older than
-- BACKUP_RETENTION are purged: no backup old enough to need them is kept.
CREATE TABLE erasure_journal (
    subscriber_id  bigint      NOT NULL,
    created_at     timestamptz NOT NULL,   -- subscribers.created_at of the erased row
    erased_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber_id, created_at)
);
CREATE INDEX erasure_journal_erased_at ON erasure_journal (erased_at);
