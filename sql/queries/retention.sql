-- Retention (storage limitation, GDPR Art. 5(1)(e)). Each delete works in batches so no
-- single statement runs long; `purge` loops until a batch comes back short.

-- name: try_lock
-- Only one replica (or `newsletter purge`) runs a pass at a time; released at commit.
SELECT pg_try_advisory_xact_lock(:lock_id);

-- name: delete_expired_signup_jobs
-- The outbox rows first, like an erasure: an in-flight confirmation send finishes before
-- its subscriber row is locked (the worker updates that row when the send succeeds).
DELETE FROM outbox
WHERE subscriber_id IN (
    SELECT id FROM subscribers
    WHERE status = 'pending' AND signup_at < now() - make_interval(secs => :max_age)
);

-- name: delete_expired_signups
DELETE FROM subscribers
WHERE id IN (
    SELECT id FROM subscribers
    WHERE status = 'pending' AND signup_at < now() - make_interval(secs => :max_age)
    LIMIT :batch
);

-- name: delete_old_opens
DELETE FROM opens
WHERE id IN (
    SELECT id FROM opens WHERE at < now() - make_interval(secs => :max_age) LIMIT :batch
);

-- name: delete_old_deliveries
-- Never one whose email is still queued.
DELETE FROM deliveries
WHERE (campaign_id, subscriber_id) IN (
    SELECT d.campaign_id, d.subscriber_id FROM deliveries d
    WHERE d.queued_at < now() - make_interval(secs => :max_age)
      AND NOT EXISTS (
          SELECT 1 FROM outbox o
          WHERE o.campaign_id = d.campaign_id AND o.subscriber_id = d.subscriber_id)
    LIMIT :batch
);

-- name: delete_old_journal
-- Erasure journal rows older than every backup kept (ERASURE_JOURNAL_RETENTION).
DELETE FROM erasure_journal
WHERE (subscriber_id, created_at) IN (
    SELECT subscriber_id, created_at FROM erasure_journal
    WHERE erased_at < now() - make_interval(secs => :max_age) LIMIT :batch
);

-- name: delete_old_manage_links
-- Fresh links to the subscriber's page, once neither the link nor its page works.
DELETE FROM manage_links
WHERE id IN (
    SELECT id FROM manage_links
    WHERE expires_at < now() AND (session_until IS NULL OR session_until < now())
    LIMIT :batch
);

-- name: delete_expired_address_changes
-- Address changes never confirmed: their link expired after CONFIRM_MAX_AGE.
DELETE FROM address_changes
WHERE id IN (
    SELECT id FROM address_changes
    WHERE requested_at < now() - make_interval(secs => :max_age)
    LIMIT :batch
);

-- name: delete_old_soft_bounces
-- Soft bounces older than BOUNCE_SOFT_WINDOW: they no longer count towards an erasure
-- (service/bounces/actions.py), so nothing needs them.
DELETE FROM soft_bounces
WHERE (subscriber_id, campaign_id) IN (
    SELECT subscriber_id, campaign_id FROM soft_bounces
    WHERE at <= now() - make_interval(secs => :window)
    LIMIT :batch
);
