-- The send circuit breaker (service/outbox/breaker.py) and the operator's resume and cancel.

-- name: hold_refusals
-- Mailbox refusals at RCPT, held until the worker's recent sends show they are no burst.
INSERT INTO held_refusals (subscriber_id, campaign_id, kind, reason, holder)
SELECT j.subscriber_id, j.campaign_id, j.kind, j.reason, :holder
FROM unnest(:subscriber_ids::bigint[], :campaign_ids::bigint[], :kinds::text[], :reasons::text[])
    AS j (subscriber_id, campaign_id, kind, reason)
JOIN subscribers s ON s.id = j.subscriber_id
ON CONFLICT (subscriber_id, campaign_id) DO UPDATE
SET reason = excluded.reason, holder = excluded.holder, held_at = now();

-- name: count_refusals
INSERT INTO refusal_counts AS r (campaign_id, category, code, count)
SELECT nullif(j.campaign_id, 0), j.category, j.code, count(*)
FROM unnest(:campaign_ids::bigint[], :categories::text[], :codes::text[])
    AS j (campaign_id, category, code)
GROUP BY 1, 2, 3
ON CONFLICT (campaign_id, category, code) DO UPDATE SET count = r.count + excluded.count;

-- name: release_held
-- Held refusals found not to be a burst: this process's, and any left for ten minutes
-- by a process that ended before it could judge them (a burst would have tripped).
DELETE FROM held_refusals
WHERE (holder = :holder OR held_at < now() - interval '10 minutes')
  AND campaign_id NOT IN (SELECT id FROM campaigns WHERE paused_at IS NOT NULL)
RETURNING subscriber_id, campaign_id, kind, reason;

-- name: count_released_failed
UPDATE campaigns c SET failed = c.failed + j.n
FROM (SELECT id, count(*) AS n FROM unnest(:ids::bigint[]) AS id GROUP BY id) AS j
WHERE c.id = j.id;

-- name: drop_held_one_off
-- A burst among one-off emails (confirmations): this process's held refusals are void.
DELETE FROM held_refusals WHERE campaign_id = 0 AND holder = :holder;

-- name: lock_campaign
-- The same advisory lock as queueing a send (campaigns.sql, lock_campaign_send).
SELECT pg_advisory_xact_lock(1852597089, (:id % 2147483647)::int);

-- name: pause_campaign
-- NULL when the campaign is already paused (another process got there first), gone, or
-- has nothing left to hold back: no email waiting and no refusal held (it was cancelled
-- while the refused batch was in flight; pausing it would only show a cancelled
-- campaign as paused).
UPDATE campaigns SET paused_at = now(), paused_reason = :reason
WHERE id = :id AND paused_at IS NULL
  AND (EXISTS (SELECT 1 FROM outbox
               WHERE kind IN ('campaign', 'welcome') AND campaign_id = :id)
       OR EXISTS (SELECT 1 FROM held_refusals WHERE campaign_id = :id))
RETURNING id;

-- name: park_campaign_jobs
-- A paused campaign's jobs wait beyond every claim (run_at = infinity); a job another
-- lane is sending is waited for and then parked if it is still there.
UPDATE outbox SET run_at = 'infinity'
WHERE kind IN ('campaign', 'welcome') AND campaign_id = :id AND run_at < 'infinity';

-- name: requeue_held
-- The burst's held refusals are not applied: their emails are queued again, parked.
WITH held AS (
    DELETE FROM held_refusals WHERE campaign_id = :id
    RETURNING subscriber_id
), people AS (
    SELECT s.id FROM subscribers s JOIN held h ON h.subscriber_id = s.id
    WHERE s.status = 'active'
    FOR KEY SHARE OF s
), jobs AS (
    INSERT INTO outbox (kind, subscriber_id, campaign_id, run_at)
    SELECT 'campaign', id, :id, 'infinity' FROM people
    RETURNING 1
)
SELECT count(*) FROM jobs;

-- name: resume_campaign
UPDATE campaigns SET paused_at = NULL, paused_reason = NULL
WHERE id = :id AND paused_at IS NOT NULL
RETURNING id;

-- name: unpark_campaign_jobs
-- Resumed: the parked jobs are due now, with their attempts back (the relay's problem
-- used them up, not the email's).
WITH resumed AS (
    UPDATE outbox SET run_at = now(), attempts = 0
    WHERE kind IN ('campaign', 'welcome') AND campaign_id = :id AND run_at = 'infinity'
    RETURNING 1
)
SELECT count(*) FROM resumed;

-- name: cancel_campaign_jobs
-- Cancelled: the emails not sent yet are not sent (their deliveries go too, so a later
-- send may queue them again), and the campaign is no longer paused.
WITH jobs AS (
    DELETE FROM outbox WHERE kind IN ('campaign', 'welcome') AND campaign_id = :id
    RETURNING subscriber_id
), unsent AS (
    DELETE FROM deliveries
    WHERE campaign_id = :id AND sent_at IS NULL
      AND subscriber_id IN (SELECT subscriber_id FROM jobs)
), counted AS (
    UPDATE campaigns
    SET recipients = greatest(recipients - (SELECT count(*) FROM jobs), 0),
        paused_at = NULL, paused_reason = NULL
    WHERE id = :id
)
SELECT count(*) FROM jobs;

-- name: drop_held_of_campaign
-- After cancel_campaign_jobs, as a statement of its own: its snapshot sees the refusals
-- held by a batch that was in flight while the jobs' deletion waited for it.
DELETE FROM held_refusals WHERE campaign_id = :id;

-- name: paused_by_reason
-- For the gauge on /metrics: paused campaigns per reason category.
SELECT paused_reason AS reason, count(*) AS n
FROM campaigns WHERE paused_at IS NOT NULL
GROUP BY paused_reason;
