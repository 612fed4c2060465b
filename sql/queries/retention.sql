-- Retention (storage limitation, GDPR Art. 5(1)(e)). Every delete is a keyset batch: it
-- starts where the last one ended (by time, then ctid), never over rows an earlier batch
-- already deleted, and service/privacy/retention.py commits each batch on its own.

-- name: try_lock
-- Only one replica (or `newsletter purge`) runs a pass at a time. A session lock: the
-- pass commits per batch, so it is held on a direct connection (never through a
-- transaction-mode pooler) and released at the end of the pass or with the connection.
SELECT pg_try_advisory_lock(:lock_id);

-- name: unlock
SELECT pg_advisory_unlock(:lock_id);

-- name: progress
SELECT done_before FROM retention_progress WHERE what = :what;

-- name: set_progress
INSERT INTO retention_progress (what, done_before) VALUES (:what, :done_before)
ON CONFLICT (what) DO UPDATE SET done_before = excluded.done_before;

-- name: expired_signups
-- The next batch of pending sign-ups whose link expired, after (:after_t, :after_tid).
SELECT id, signup_at AS t, ctid AS tid FROM subscribers
WHERE status = 'pending' AND signup_at < now() - make_interval(secs => :max_age)
  AND signup_at >= :after_t AND (signup_at, ctid) > (:after_t, :after_tid::tid)
ORDER BY signup_at, ctid
LIMIT :batch;

-- name: delete_signup_jobs
-- The outbox rows first, like an erasure: an in-flight confirmation send finishes before
-- its subscriber row is locked (the worker updates that row when the send succeeds).
DELETE FROM outbox WHERE subscriber_id = ANY(:ids::bigint[]);

-- name: delete_signups
DELETE FROM subscribers
WHERE id = ANY(:ids::bigint[])
  AND status = 'pending' AND signup_at < now() - make_interval(secs => :max_age);

-- name: opens_partitions
-- The partitions of `opens` with the end of their range (NULL: the default partition).
SELECT c.oid::regclass::text AS name,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
           AS until
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'opens'::regclass
ORDER BY until NULLS LAST;

-- name: drop_month
-- A whole month past the retention: its rows counted, then the partition dropped
-- (sql/151_opens_partitioned.sql says why DROP; sql/164 which locks, in which order).
SELECT opens_drop_month(:part::regclass, :parent_wait);

-- name: lock_timeout
-- How long the DDL of the pass may wait for a lock before it gives up for now.
SELECT set_config('lock_timeout', :timeout, true);

-- name: ensure_month
-- The partition of the month that starts at :month (sql/151_opens_partitioned.sql).
SELECT opens_ensure_month(:month::date);

-- name: first_open
-- Where the first pass starts (later passes start at their progress): one scan, once.
SELECT min(at) FROM opens WHERE at < :cutoff;

-- name: first_default_open
-- The default partition is empty unless an open came with no partition for its month.
SELECT min(at) FROM opens_default;

-- name: delete_opens
-- One slice of time; the BRIN index on `at` finds its pages.
DELETE FROM opens WHERE at >= :lo AND at < :hi;

-- name: count_opens
-- Rows in a slice about to be deleted, when it is wide (service/privacy/retention.py).
SELECT count(*) FROM opens WHERE at >= :lo AND at < :hi;

-- name: first_delivery
SELECT min(queued_at) FROM deliveries WHERE queued_at < :cutoff;

-- name: count_deliveries
SELECT count(*) FROM deliveries WHERE queued_at >= :lo AND queued_at < :hi;

-- name: delete_deliveries
-- One slice of time (BRIN index deliveries_queued_at), never a delivery whose email is
-- still queued: `kept_from` is the earliest of those, where the progress must stay.
WITH gone AS (
    DELETE FROM deliveries d
    WHERE d.queued_at >= :lo AND d.queued_at < :hi
      AND NOT EXISTS (
          SELECT 1 FROM outbox o
          WHERE o.campaign_id = d.campaign_id AND o.subscriber_id = d.subscriber_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS deleted,
       (SELECT min(d.queued_at) FROM deliveries d
        WHERE d.queued_at >= :lo AND d.queued_at < :hi
          AND EXISTS (
              SELECT 1 FROM outbox o
              WHERE o.campaign_id = d.campaign_id AND o.subscriber_id = d.subscriber_id))
           AS kept_from;

-- name: delete_old_journal
-- Erasure journal rows older than every backup kept (ERASURE_JOURNAL_RETENTION).
WITH batch AS (
    SELECT ctid AS tid, erased_at AS t FROM erasure_journal
    WHERE erased_at < now() - make_interval(secs => :max_age)
      AND erased_at >= :after_t AND (erased_at, ctid) > (:after_t, :after_tid::tid)
    ORDER BY erased_at, ctid
    LIMIT :batch
),
gone AS (
    DELETE FROM erasure_journal j USING batch b WHERE j.ctid = b.tid RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM batch) AS seen,
       b.t AS last_t, b.tid AS last_tid
FROM (SELECT NULL) AS one LEFT JOIN LATERAL (
    SELECT t, tid FROM batch ORDER BY t DESC, tid DESC LIMIT 1) b ON true;

-- name: delete_old_manage_links
-- Fresh links to the subscriber's page, once neither the link nor its page works.
WITH batch AS (
    SELECT ctid AS tid, expires_at AS t FROM manage_links
    WHERE expires_at < now()
      AND expires_at >= :after_t AND (expires_at, ctid) > (:after_t, :after_tid::tid)
    ORDER BY expires_at, ctid
    LIMIT :batch
),
gone AS (
    DELETE FROM manage_links m USING batch b
    WHERE m.ctid = b.tid AND (m.session_until IS NULL OR m.session_until < now())
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM batch) AS seen,
       b.t AS last_t, b.tid AS last_tid
FROM (SELECT NULL) AS one LEFT JOIN LATERAL (
    SELECT t, tid FROM batch ORDER BY t DESC, tid DESC LIMIT 1) b ON true;

-- name: delete_expired_address_changes
-- Address changes never confirmed: their link expired after CONFIRM_MAX_AGE.
WITH batch AS (
    SELECT ctid AS tid, requested_at AS t FROM address_changes
    WHERE requested_at < now() - make_interval(secs => :max_age)
      AND requested_at >= :after_t AND (requested_at, ctid) > (:after_t, :after_tid::tid)
    ORDER BY requested_at, ctid
    LIMIT :batch
),
gone AS (
    DELETE FROM address_changes a USING batch b WHERE a.ctid = b.tid RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM batch) AS seen,
       b.t AS last_t, b.tid AS last_tid
FROM (SELECT NULL) AS one LEFT JOIN LATERAL (
    SELECT t, tid FROM batch ORDER BY t DESC, tid DESC LIMIT 1) b ON true;

-- name: delete_old_soft_bounces
-- Soft bounces older than BOUNCE_SOFT_WINDOW: they no longer count towards an erasure
-- (service/bounces/actions.py), so nothing needs them.
WITH batch AS (
    SELECT ctid AS tid, at AS t FROM soft_bounces
    WHERE at <= now() - make_interval(secs => :window)
      AND at >= :after_t AND (at, ctid) > (:after_t, :after_tid::tid)
    ORDER BY at, ctid
    LIMIT :batch
),
gone AS (
    DELETE FROM soft_bounces s USING batch b WHERE s.ctid = b.tid RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM batch) AS seen,
       b.t AS last_t, b.tid AS last_tid
FROM (SELECT NULL) AS one LEFT JOIN LATERAL (
    SELECT t, tid FROM batch ORDER BY t DESC, tid DESC LIMIT 1) b ON true;

-- name: delete_unused_user_agents
-- User-agent strings (sql/161) last seen in a month wholly before the retention cutoff:
-- every open that used one was older than the cutoff and is gone (the recorder moves
-- last_seen to the month of the write). At most one month's new strings per pass.
DELETE FROM user_agents
WHERE last_seen < date_trunc('month', :cutoff::timestamptz AT TIME ZONE 'UTC')::date;
