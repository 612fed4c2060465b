-- The transactional outbox worker (service/outbox.py).

-- name: claim_due
-- One due job, locked until the worker's transaction ends (through the send), skipped
-- by every other worker meanwhile. Confirmations (priority 0) before campaign mail.
SELECT id, kind, subscriber_id, campaign_id, attempts
FROM outbox
WHERE run_at <= now()
ORDER BY priority, run_at, id
LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: next_due_in
-- Seconds until the next job is due (NULL when the outbox is empty). Not greatest(0, …):
-- greatest() ignores NULL, so an empty outbox would read as "due now" and every lane
-- would poll in a tight loop.
SELECT extract(epoch FROM min(run_at) - now())::float8 FROM outbox;

-- name: delete_job
DELETE FROM outbox WHERE id = :id;

-- name: retry_later
UPDATE outbox
SET attempts = attempts + 1, run_at = now() + make_interval(secs => :delay), last_error = :error
WHERE id = :id;

-- name: mark_confirm_sent
UPDATE subscribers SET confirm_sent_at = now() WHERE id = :subscriber_id;

-- name: mark_delivery_sent
UPDATE deliveries SET sent_at = now()
WHERE campaign_id = :campaign_id AND subscriber_id = :subscriber_id;

-- name: count_campaign_sent
UPDATE campaigns SET sent = sent + 1 WHERE id = :campaign_id;

-- name: count_campaign_failed
UPDATE campaigns SET failed = failed + 1 WHERE id = :campaign_id;

-- name: confirm_recipient
-- The confirmation composer's view of the subscriber (never locked).
SELECT email, name, status, tracking_requested FROM subscribers WHERE id = :subscriber_id;
