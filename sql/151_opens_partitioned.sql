-- Monthly partitions of `opens`, step 4 of 4 (issue 31): the swap, all of it catalog
-- changes under one short ACCESS EXCLUSIVE lock of the old table (no row is read or
-- copied: 148-150 prepared it).
--
-- - The old table, renamed opens_legacy, loses `id` (only the retention delete and a sort
--   of the export used it), its primary key and its B-tree on `at`; if it holds rows it is
--   attached as the partition of everything before the bound 148 chose (the validated
--   CHECK constraint spares the attach its scan), and its indexes become the partitions
--   of the new ones. An empty one is simply dropped.
-- - `opens` is partitioned by range of `at`, a partition per UTC month, named
--   opens_yYYYYmMM, made by opens_ensure_month(), which the retention pass calls for the
--   coming months and which moves into the new month any rows the default partition holds
--   for it. Retention drops whole months and deletes in batches only in the month the
--   retention boundary falls in.
-- - The default partition takes an open whose month has no partition yet (the pass did
--   not run for months, a clock far off): the pixel never loses one for that.
-- - Indexes: subscriber_id (the erasure trigger of 060 and the export find a person's
--   opens in every partition through it) and a BRIN index on `at`.
-- - No statistics on ip and user_agent, on every partition (see 138).
ALTER TABLE opens RENAME TO opens_legacy;
ALTER TABLE opens_legacy DROP CONSTRAINT opens_pkey;
ALTER TABLE opens_legacy DROP COLUMN id;
DROP INDEX opens_at;
ALTER INDEX opens_subscriber RENAME TO opens_legacy_subscriber;
ALTER INDEX opens_at_brin RENAME TO opens_legacy_at;

CREATE TABLE opens (
    subscriber_id   bigint      NOT NULL,
    campaign_id     bigint      NOT NULL,
    at              timestamptz NOT NULL,
    ip              text,                      -- reduced per IP_MODE
    user_agent      text,
    client          text,
    os              text,
    country         text,
    machine_reason  text                       -- NULL: a person opened it
) PARTITION BY RANGE (at);
ALTER TABLE opens ALTER COLUMN ip SET STATISTICS 0, ALTER COLUMN user_agent SET STATISTICS 0;
CREATE INDEX opens_subscriber ON ONLY opens (subscriber_id);
CREATE INDEX opens_at ON ONLY opens USING brin (at);

CREATE TABLE opens_default PARTITION OF opens DEFAULT;
ALTER TABLE opens_default
    ALTER COLUMN ip SET STATISTICS 0, ALTER COLUMN user_agent SET STATISTICS 0;

-- The month starting at `month` (a UTC date, its first day) as a partition of `opens`,
-- unless one exists or another partition covers part of it. Made as a table of its own
-- and then attached: ATTACH takes a SHARE UPDATE EXCLUSIVE lock on `opens`, which the
-- pixel's inserts do not wait for (CREATE TABLE … PARTITION OF would take ACCESS
-- EXCLUSIVE), and an ACCESS EXCLUSIVE lock on the default partition, whose rows of that
-- month are moved first (it has none unless the pass did not run). True if it made one.
CREATE FUNCTION opens_ensure_month(month date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    lo   timestamptz := month::timestamp AT TIME ZONE 'UTC';
    hi   timestamptz := (month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    name text := format('opens_y%sm%s', to_char(month, 'YYYY'), to_char(month, 'MM'));
BEGIN
    IF extract(day FROM month) <> 1 THEN
        RAISE EXCEPTION 'opens_ensure_month: % is not the first day of a month', month;
    END IF;
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE %I (LIKE opens)', name);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN ip SET STATISTICS 0,'
                       ' ALTER COLUMN user_agent SET STATISTICS 0', name);
        EXECUTE format('WITH moved AS (DELETE FROM opens_default WHERE at >= %L AND at < %L'
                       ' RETURNING *) INSERT INTO %I SELECT * FROM moved', lo, hi, name);
        EXECUTE format('ALTER TABLE opens ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       name, lo, hi);
    EXCEPTION WHEN invalid_object_definition THEN
        -- "would overlap partition …": the legacy partition still covers the month.
        RETURN false;
    END;
    RETURN true;
END
$$;

-- A month partition of `opens` wholly past the retention: the number of its rows, and
-- the table dropped. DROP, not DETACH … CONCURRENTLY: that cannot be used while there is
-- a default partition, nor in a transaction. DROP takes an ACCESS EXCLUSIVE lock on
-- `opens` for the moment of the catalog change; the pass sets a lock_timeout so that it
-- gives up (until the next pass) rather than hold the pixel's inserts queued behind it
-- while a long query reads `opens`.
CREATE FUNCTION opens_drop_month(part regclass) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = part AND inhparent = 'opens'::regclass)
       OR part = 'opens_default'::regclass THEN
        RAISE EXCEPTION 'opens_drop_month: % is not a month partition of opens', part;
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', part) INTO n;
    -- The parent first, as every query of `opens` locks it before its partitions: taking
    -- the partition first would deadlock with an erasure deleting across all of them.
    LOCK TABLE opens IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('DROP TABLE %s', part);
    RETURN n;
END
$$;

DO $$
DECLARE
    bound timestamptz := (SELECT legacy_until FROM opens_partitioning);
    first date;
BEGIN
    IF EXISTS (SELECT FROM opens_legacy) THEN
        EXECUTE format('ALTER TABLE opens ATTACH PARTITION opens_legacy'
                       ' FOR VALUES FROM (MINVALUE) TO (%L)', bound);
        ALTER INDEX opens_subscriber ATTACH PARTITION opens_legacy_subscriber;
        ALTER INDEX opens_at ATTACH PARTITION opens_legacy_at;
        first := (bound AT TIME ZONE 'UTC')::date;
    ELSE
        DROP TABLE opens_legacy;
        first := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    END IF;
    FOR i IN 0 .. 2 LOOP
        PERFORM opens_ensure_month((first + make_interval(months => i))::date);
    END LOOP;
END
$$;

DROP TABLE opens_partitioning;
