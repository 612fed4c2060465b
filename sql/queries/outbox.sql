-- The transactional outbox worker (service/outbox/sender.py).

-- name: claim_urgent
-- Up to :limit due jobs a person waits for (priority 0: confirmations, fresh links,
-- address confirmations), locked until the worker's transaction ends (through their
-- sends) and skipped by every other worker meanwhile. Claimed before campaign mail.
SELECT id, kind, subscriber_id, campaign_id, attempts, run_at
FROM outbox
WHERE priority = 0 AND run_at <= now()
ORDER BY priority, run_at, id
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: claim_campaign
-- Up to :limit due campaign jobs after (:after_run_at, :after_id) in the claim's index
-- order, but none of :claimed (a lane's own locks are not skipped). The lower bound is
-- where the lane's previous claim ended (service/outbox/sender.py, Resume): the index entries
-- of jobs sent since the last vacuum lie before it, and a claim from the head of the
-- queue walks all of them (12 ms for 50 jobs behind 990,000 sent ones, against 0.4 ms).
SELECT id, kind, subscriber_id, campaign_id, attempts, run_at
FROM outbox
WHERE (priority, run_at, id) > (1, coalesce(:after_run_at, '-infinity'::timestamptz), :after_id)
  AND priority <= 1  -- campaign mail; not `priority = 1`, which the index scan would start
                     -- from instead of the bound above
  AND run_at <= now()
  AND id <> ALL(:claimed::bigint[])
ORDER BY priority, run_at, id
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: next_due_in
-- Seconds until the next job is due (NULL when the outbox is empty), from the claim's
-- index, one priority at a time. Not greatest(0, …): greatest() ignores NULL, so an
-- empty outbox would read as "due now" and every lane would poll in a tight loop.
-- A paused campaign's jobs (run_at infinity) are never due.
SELECT extract(epoch FROM least(
    (SELECT min(run_at) FROM outbox WHERE priority = 0),
    (SELECT min(run_at) FROM outbox WHERE priority = 1 AND run_at < 'infinity')
) - now())::float8;

-- name: delete_jobs
DELETE FROM outbox WHERE id = ANY(:ids::bigint[]);

-- name: retry_jobs_later
UPDATE outbox o
SET attempts = o.attempts + 1,
    run_at = now() + make_interval(secs => j.delay),
    last_error = j.error
FROM unnest(:ids::bigint[], :delays::float8[], :errors::text[]) AS j (id, delay, error)
WHERE o.id = j.id;

-- name: mark_confirms_sent
UPDATE subscribers SET confirm_sent_at = now() WHERE id = ANY(:subscriber_ids::bigint[]);

-- name: mark_deliveries_sent
UPDATE deliveries d SET sent_at = now()
FROM unnest(:campaign_ids::bigint[], :subscriber_ids::bigint[]) AS j (campaign_id, subscriber_id)
WHERE d.campaign_id = j.campaign_id AND d.subscriber_id = j.subscriber_id;

-- name: count_campaigns
-- One update per campaign and batch, the batch's last statement: the campaign row is
-- locked only from here to the commit, so lanes sending one campaign hardly wait on it.
UPDATE campaigns c SET sent = c.sent + j.sent, failed = c.failed + j.failed
FROM unnest(:ids::bigint[], :sent::bigint[], :failed::bigint[]) AS j (id, sent, failed)
WHERE c.id = j.id;

-- name: confirm_recipient
-- The confirmation composer's view of the subscriber (never locked).
SELECT email, name, status, tracking_requested, lang FROM subscribers WHERE id = :subscriber_id;
