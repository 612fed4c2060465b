-- Sign-up, confirmation and "this wasn't me" (service/signup.py, service/confirmation.py).

-- name: upsert_pending
-- A new address becomes a pending row; a pending one is refreshed (its purge clock
-- restarts); an active one is left alone and returns no row.
INSERT INTO subscribers AS s (email, name, tracking_consent)
VALUES (:email, :name, :tracking)
ON CONFLICT (lower(email)) DO UPDATE
    SET signup_at = now(), name = EXCLUDED.name, tracking_consent = EXCLUDED.tracking_consent
    WHERE s.status = 'pending'
RETURNING id, (xmax = 0) AS created;

-- name: insert_consent_event
INSERT INTO consent_events (subscriber_id, kind, ip, user_agent, source,
                            consent_text_version, method)
VALUES (:subscriber_id, :kind, :ip, :user_agent, :source, :consent_text_version, :method);

-- name: insert_signup_evidence
-- The sign-up's evidence rows ('signup', and 'tracking_granted' when the box was ticked)
-- in one round trip, counting a new sign-up in the anonymous daily aggregate too.
WITH evidence AS (
    INSERT INTO consent_events (subscriber_id, kind, ip, user_agent, source,
                                consent_text_version)
    SELECT :subscriber_id, kind, :ip, :user_agent, :source, :consent_text_version
    FROM unnest(:kinds::text[]) AS kind
)
INSERT INTO list_daily (day, signups)
SELECT (now() AT TIME ZONE 'UTC')::date, 1 WHERE :created::boolean
ON CONFLICT (day) DO UPDATE SET signups = list_daily.signups + 1;

-- name: count_confirmation
INSERT INTO list_daily (day, confirmations) VALUES ((now() AT TIME ZONE 'UTC')::date, 1)
ON CONFLICT (day) DO UPDATE SET confirmations = list_daily.confirmations + 1;

-- name: confirm_job_queued
SELECT EXISTS (SELECT 1 FROM outbox WHERE subscriber_id = :subscriber_id AND kind = 'confirm');

-- name: queue_confirmation
-- The email job, and the wake-up of every replica's outbox worker (delivered at commit).
WITH job AS (
    INSERT INTO outbox (kind, subscriber_id) VALUES ('confirm', :subscriber_id) RETURNING id
)
SELECT pg_notify('newsletter_outbox', id::text) FROM job;

-- name: subscriber_state
-- What the confirmation pages need; `expired` is true for a pending sign-up older
-- than the confirmation period (never activated, purged later).
SELECT id, status, confirm_sent_at,
       (status = 'pending' AND signup_at < now() - make_interval(secs => :max_age)) AS expired,
       (confirm_sent_at IS NULL
        OR confirm_sent_at > now() - make_interval(secs => :scanner_window)) AS in_scanner_window
FROM subscribers WHERE id = :id;

-- name: activate
UPDATE subscribers SET status = 'active', confirmed_at = now()
WHERE id = :id AND status = 'pending'
  AND signup_at >= now() - make_interval(secs => :max_age)
RETURNING id;

-- name: delete_pending_jobs
-- Before deleting a pending row: waits for an in-flight send of its job, so the row
-- lock order is always outbox then subscribers (the worker's order too).
DELETE FROM outbox
WHERE subscriber_id = :id
  AND EXISTS (SELECT 1 FROM subscribers WHERE id = :id AND status = 'pending');

-- name: delete_pending
DELETE FROM subscribers WHERE id = :id AND status = 'pending' RETURNING id;
