-- Monthly partitions of `opens`, step 1 of 4 (issue 31); 149-151 follow.
--
-- An existing `opens` becomes the first partition, "everything before B", where B is the
-- start of the month after next (UTC): far enough ahead that no open written while the
-- steps run reaches it. Its range is promised here by a CHECK constraint added NOT VALID
-- (an ACCESS EXCLUSIVE lock for a moment, no scan; new rows are checked from now on),
-- validated by 149 under a SHARE UPDATE EXCLUSIVE lock that lets the pixel write, so that
-- 151 can attach the table without scanning it. Each migration file is one transaction,
-- which is why these are separate files: in one file the ACCESS EXCLUSIVE lock of the
-- rename would be held through the validating scan.
--
-- retention_progress: how far the keyset deletes of the retention pass have got
-- (service/privacy/retention.py), committed with each batch so that a killed pass keeps
-- its progress and the next one starts where it ended.
CREATE TABLE opens_partitioning (legacy_until timestamptz NOT NULL);
INSERT INTO opens_partitioning
SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months') AT TIME ZONE 'UTC';

DO $$
BEGIN
    EXECUTE format('ALTER TABLE opens ADD CONSTRAINT opens_legacy_range CHECK (at < %L) NOT VALID',
                   (SELECT legacy_until FROM opens_partitioning));
END
$$;

CREATE TABLE retention_progress (
    what         text        PRIMARY KEY,
    done_before  timestamptz NOT NULL    -- nothing older than this is left to delete
);
