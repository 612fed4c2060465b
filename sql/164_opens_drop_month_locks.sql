-- Dropping a month of `opens` without holding up the pixel (issue 31).
--
-- opens_drop_month (sql/151) locked the whole table first, `LOCK TABLE opens`, which takes
-- every partition too: it waited for whatever held any of them, such as autovacuum of
-- the current month, where the pixel writes, or of the month the last pass deleted from.
-- The pixel's inserts queued behind that waiting lock, up to the pass's lock timeout:
-- bench/bench_scale.py measured a pixel p99 of 1,310 ms in one pass at 20 M opens.
--
-- Now the month goes in two steps, both in the caller's transaction:
-- 1. its own partition, under the caller's lock timeout. Only what reads every month
--    waits meanwhile (an erasure, an access export); the pixel writes to the current
--    month and does not. An autovacuum of that month is cancelled by PostgreSQL once
--    it has blocked the lock for deadlock_timeout (1 s), so the caller waits longer than
--    that (service/privacy/retention.py).
-- 2. the table alone (`LOCK TABLE ONLY`), which DROP needs and which the pixel's inserts
--    do queue behind, for at most `parent_wait`; then DROP, which also locks the default
--    partition. An erasure holds the table and waits for the month's partition, which
--    this transaction already holds: a lock cycle. It ends when `parent_wait` runs out,
--    well before PostgreSQL's deadlock check (deadlock_timeout, 1 s) could abort the
--    erasure instead; the pass tries again later.
-- The rows are counted before any lock (an erasure may still take a few of them out of
-- that count before the month goes): counting under the month's lock would hold up
-- erasures for as long as the count takes.
CREATE FUNCTION opens_drop_month(part regclass, parent_wait text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = part AND inhparent = 'opens'::regclass)
       OR part = 'opens_default'::regclass THEN
        RAISE EXCEPTION 'opens_drop_month: % is not a month partition of opens', part;
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', part) INTO n;
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', part);
    PERFORM set_config('lock_timeout', parent_wait, true);
    LOCK TABLE ONLY opens IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('DROP TABLE %s', part);
    RETURN n;
END
$$;

-- The one-argument form, which a replica of the previous release calls during a rollout.
CREATE OR REPLACE FUNCTION opens_drop_month(part regclass) RETURNS bigint
LANGUAGE sql AS $$ SELECT opens_drop_month(part, '100ms') $$;
