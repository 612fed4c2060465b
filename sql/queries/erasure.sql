-- Erasure (unsubscribe, admin DELETE) and access requests (admin GET).

-- name: find_subscriber
SELECT id FROM subscribers WHERE lower(email) = lower(:email);

-- name: subscriber_email
SELECT email FROM subscribers WHERE id = :id;

-- name: delete_outbox
-- First, so that an in-flight send of this subscriber (the worker keeps its job row
-- locked while talking SMTP) finishes before the erasure commits.
DELETE FROM outbox WHERE subscriber_id = :id;

-- name: delete_address_rate_limits
DELETE FROM rate_limits WHERE scope = 'address' AND key = :key;

-- name: delete_subscriber
-- Cascades to consent_events, deliveries, opens (and any outbox job queued meanwhile).
DELETE FROM subscribers WHERE id = :id RETURNING status, email;

-- name: count_unsubscribe
INSERT INTO list_daily (day, unsubscribes)
VALUES ((now() AT TIME ZONE 'UTC')::date, 1)
ON CONFLICT (day) DO UPDATE SET unsubscribes = list_daily.unsubscribes + 1;

-- name: export_subscriber
SELECT id, email, name, status, tracking_consent, created_at, signup_at,
       confirm_sent_at, confirmed_at
FROM subscribers
WHERE lower(email) = lower(:email);

-- name: export_consent_events
SELECT kind, at, ip, user_agent, source, consent_text_version, method
FROM consent_events WHERE subscriber_id = :id ORDER BY at, id;

-- name: export_opens
SELECT o.campaign_id, c.name AS campaign_name, o.at, o.ip, o.user_agent, o.client, o.os,
       o.country, o.machine_reason
FROM opens o JOIN campaigns c ON c.id = o.campaign_id
WHERE o.subscriber_id = :id ORDER BY o.at, o.id;

-- name: export_deliveries
SELECT d.campaign_id, c.name AS campaign_name, d.queued_at, d.sent_at, d.first_open_at
FROM deliveries d JOIN campaigns c ON c.id = d.campaign_id
WHERE d.subscriber_id = :id ORDER BY d.queued_at, d.campaign_id;

-- name: export_outbox
SELECT kind, campaign_id, attempts, run_at, created_at, last_error
FROM outbox WHERE subscriber_id = :id ORDER BY id;

-- name: export_rate_limits
SELECT window_start, hits, last_at
FROM rate_limits WHERE scope = 'address' AND key = :key ORDER BY window_start;
