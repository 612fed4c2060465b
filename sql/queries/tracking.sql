-- name: lock_subscriber
-- Waits for a pixel batch holding the row FOR SHARE, so its events are deleted below.
SELECT id, tracking_consent, tracking_withdrawn_at
FROM subscribers
WHERE id = :subscriber_id
FOR UPDATE;

-- name: withdraw
UPDATE subscribers
SET tracking_consent = false,
    tracking_withdrawn_at = coalesce(tracking_withdrawn_at, now())
WHERE id = :subscriber_id;

-- name: record_withdrawal
INSERT INTO consent_events (subscriber_id, kind, ip, user_agent, source, consent_text_version)
VALUES (:subscriber_id, 'tracking_withdrawn', :ip, :user_agent, :source, :version);

-- name: delete_opens
-- Personal open data goes with the consent, also for mail sent earlier.
DELETE FROM opens WHERE subscriber_id = :subscriber_id;

-- name: forget_first_opens
UPDATE deliveries
SET first_open_at = NULL
WHERE subscriber_id = :subscriber_id AND first_open_at IS NOT NULL;
