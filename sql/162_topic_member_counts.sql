-- Topic member counts kept with the writes (issue 31): the topics page and
-- GET /admin/api/topics read each topic's number of ACTIVE members from here instead of
-- reading every membership of the topic and its subscriber (a default topic's count was
-- the whole list). Built as sql/153 builds the subscriber counts: signed deltas, only
-- ever inserted, so concurrent writers never wait on a hot counter row; a topic's count
-- is the sum of its rows; every 64th write folds the committed deltas under a tried
-- advisory lock.
--
-- The count depends on writes to two tables, each kept by its own triggers:
--
-- * memberships joined or left (subscriber_topics INSERT, DELETE, UPDATE): statement
--   triggers with transition tables (an import joins thousands in one statement). Each
--   locks the members' subscriber rows FOR SHARE before reading their status, so a
--   concurrent change of that status (a confirmation updates the row) either commits
--   first and is read, or waits and then sees the membership: no change is counted
--   twice or missed. The service's callers hold those rows already (sql/131);
-- * a subscriber's status into or out of 'active' (a confirmation; unsubscribes and
--   bounces erase): a row trigger adds +1 or -1 for each of the person's topics;
-- * an erasure: its ON DELETE CASCADE deletes the memberships only after the subscriber
--   row is gone, when their status can no longer be read. A BEFORE DELETE row trigger,
--   for active subscribers only (an expired sign-up's purge does not call it), takes
--   their topics off while the row is still there; the memberships' trigger then skips
--   the rows of subscribers it cannot see any more;
-- * a topic deleted: its cascade's rows are skipped too (their topic is gone); the
--   topic's deltas stay behind unread (the queries join topics) until the next fold
--   drops them;
-- * TRUNCATE of subscriber_topics (also through TRUNCATE subscribers/topics CASCADE):
--   the counts become empty.
--
-- This file only creates: its CREATE TRIGGERs hold subscribers and subscriber_topics
-- against writes (SHARE ROW EXCLUSIVE) for milliseconds, after the writes under way
-- (a running import) finish. The counting is sql/163's, online.
--
-- No personal data here: topic ids and numbers. Writers that bypass triggers
-- (session_replication_role = replica) would make the counts drift; the service never
-- does. To rebuild them, online: `SELECT topic_member_counts_rebuild()` (sql/163).
CREATE TABLE topic_member_counts (
    topic_id  bigint NOT NULL,  -- no foreign key: a deleted topic's deltas are dropped by the fold
    n         bigint NOT NULL
);

CREATE SEQUENCE topic_member_counts_writes;

CREATE FUNCTION topic_member_counts_fold() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- "nl" "tc" in ASCII: any constant unique to this service (the rebuild takes it too).
    IF pg_try_advisory_xact_lock(1852601443) THEN
        WITH folded AS (DELETE FROM topic_member_counts RETURNING topic_id, n)
        INSERT INTO topic_member_counts (topic_id, n)
        SELECT f.topic_id, sum(f.n) FROM folded f
        WHERE EXISTS (SELECT 1 FROM topics t WHERE t.id = f.topic_id)
        GROUP BY f.topic_id HAVING sum(f.n) <> 0;
    END IF;
END
$$;

CREATE FUNCTION topic_member_counts_wrote() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('topic_member_counts_writes') % 64 = 0 THEN
        PERFORM topic_member_counts_fold();
    END IF;
END
$$;

-- subscriber_topics: memberships joined and left.
CREATE FUNCTION topic_member_counts_membership() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM topic_member_counts;
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        -- Rows whose topic or subscriber is gone are a cascade's (see the header).
        WITH people AS MATERIALIZED (
            SELECT s.id, s.status FROM subscribers s
            WHERE s.id IN (SELECT o.subscriber_id FROM old_rows o
                           WHERE EXISTS (SELECT 1 FROM topics t WHERE t.id = o.topic_id))
            ORDER BY s.id
            FOR SHARE
        )
        INSERT INTO topic_member_counts (topic_id, n)
        SELECT o.topic_id, -count(*)
        FROM old_rows o JOIN people p ON p.id = o.subscriber_id
        WHERE p.status = 'active' AND EXISTS (SELECT 1 FROM topics t WHERE t.id = o.topic_id)
        GROUP BY o.topic_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        WITH people AS MATERIALIZED (
            SELECT s.id, s.status FROM subscribers s
            WHERE s.id IN (SELECT subscriber_id FROM new_rows)
            ORDER BY s.id
            FOR SHARE
        )
        INSERT INTO topic_member_counts (topic_id, n)
        SELECT r.topic_id, count(*)
        FROM new_rows r JOIN people p ON p.id = r.subscriber_id
        WHERE p.status = 'active'
        GROUP BY r.topic_id;
    END IF;
    PERFORM topic_member_counts_wrote();
    RETURN NULL;
END
$$;

-- subscribers: a status into or out of 'active' (UPDATE, after), an active subscriber
-- erased (DELETE, before its cascade).
CREATE FUNCTION topic_member_counts_person() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO topic_member_counts (topic_id, n)
        SELECT topic_id, -1 FROM subscriber_topics WHERE subscriber_id = OLD.id;
    ELSE
        INSERT INTO topic_member_counts (topic_id, n)
        SELECT topic_id, CASE WHEN NEW.status = 'active' THEN 1 ELSE -1 END
        FROM subscriber_topics WHERE subscriber_id = NEW.id;
    END IF;
    IF FOUND THEN
        PERFORM topic_member_counts_wrote();
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NULL;
END
$$;

-- The rebuild and the backfill (sql/163), without blocking any writer: the triggers must
-- be in place (committed) already. Holding the fold's lock (no fold runs meanwhile; a
-- writer's fold is tried and skipped, and the rebuild waits, blocking nobody, for a
-- transaction that folded to commit), one statement, with one snapshot, deletes the
-- deltas that snapshot sees (their writes are in the count it takes) and inserts the
-- counts as of that snapshot. The deltas of transactions still running are invisible to
-- it, stay, and add their writes when they commit.
CREATE FUNCTION topic_member_counts_rebuild() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'topic_member_counts_rebuild() needs READ COMMITTED (one snapshot '
                        'per statement), not %', current_setting('transaction_isolation');
    END IF;
    PERFORM pg_advisory_xact_lock(1852601443);
    WITH gone AS (DELETE FROM topic_member_counts RETURNING 1)
    INSERT INTO topic_member_counts (topic_id, n)
    SELECT st.topic_id, count(*)
    FROM subscriber_topics st JOIN subscribers s ON s.id = st.subscriber_id
    WHERE s.status = 'active'
    GROUP BY st.topic_id;
END
$$;

CREATE TRIGGER topic_member_counts_insert AFTER INSERT ON subscriber_topics
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION topic_member_counts_membership();
CREATE TRIGGER topic_member_counts_delete AFTER DELETE ON subscriber_topics
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION topic_member_counts_membership();
CREATE TRIGGER topic_member_counts_update AFTER UPDATE ON subscriber_topics
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION topic_member_counts_membership();
CREATE TRIGGER topic_member_counts_truncate AFTER TRUNCATE ON subscriber_topics
    FOR EACH STATEMENT EXECUTE FUNCTION topic_member_counts_membership();

CREATE TRIGGER topic_member_counts_status AFTER UPDATE OF status ON subscribers
    FOR EACH ROW WHEN ((OLD.status = 'active') IS DISTINCT FROM (NEW.status = 'active'))
    EXECUTE FUNCTION topic_member_counts_person();
CREATE TRIGGER topic_member_counts_erasure BEFORE DELETE ON subscribers
    FOR EACH ROW WHEN (OLD.status = 'active')
    EXECUTE FUNCTION topic_member_counts_person();
