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
SELECT record_consent(ARRAY[ROW(:subscriber_id::bigint, 'tracking_withdrawn', NULL, :ip::text,
                                :user_agent::text, :source::text, :version::text,
                                NULL, NULL)::consent_evidence]);

-- name: grant
-- Consent to personal open tracking, given by the person (the confirmation page's form or
-- their own page), with its evidence, in one statement; nothing when it is given already.
-- The grant answers the sign-up's wish, so `tracking_requested` is cleared; the withdrawal
-- history (`tracking_withdrawn_at`) stays. Opens are recorded from the next email on
-- (mail sent before carries the campaign-only pixel).
WITH granted AS (
    UPDATE subscribers SET tracking_consent = true, tracking_requested = false
    WHERE id = :subscriber_id AND NOT tracking_consent
    RETURNING id
)
SELECT record_consent(array_agg(ROW(id, 'tracking_granted', NULL, :ip, :user_agent, :source,
                                    :version, :method, NULL)::consent_evidence))
FROM granted;

-- name: delete_opens
-- Personal open data goes with the consent, also for mail sent earlier.
DELETE FROM opens WHERE subscriber_id = :subscriber_id;

-- name: forget_first_opens
UPDATE deliveries
SET first_open_at = NULL
WHERE subscriber_id = :subscriber_id AND first_open_at IS NOT NULL;

-- name: subscriber_lang
-- The language of the tracking page (the subscriber's; NULL when there is none).
SELECT lang FROM subscribers WHERE id = :subscriber_id;
