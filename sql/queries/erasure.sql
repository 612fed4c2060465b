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
-- :keys are the address's HMACs under every day key still held (service/web/ratelimit.py).
DELETE FROM rate_limits WHERE scope = 'address' AND key = ANY (:keys::bytea[]);

-- name: delete_subscriber
-- Cascades to consent_events, deliveries, opens, subscriber_topics (and any outbox job queued meanwhile),
-- and leaves the row's id and creation time in the erasure journal (no personal data),
-- from which `newsletter reapply-erasures` erases it again after a backup restore.
WITH gone AS (
    DELETE FROM subscribers WHERE id = :id RETURNING id, created_at, status, email
),
journal AS (
    INSERT INTO erasure_journal (subscriber_id, created_at)
    SELECT id, created_at FROM gone
    ON CONFLICT DO NOTHING
)
SELECT status, email FROM gone;

-- name: pending_addresses
-- The new address of a pending address change: its allowance's rate-limit rows go too.
-- Not of an unmailed one (sql/137): that address is someone else's, or its allowance was
-- spent by others; its rows are not about this person.
SELECT new_email FROM address_changes WHERE subscriber_id = :id AND NOT unmailed;

-- name: count_unsubscribe
INSERT INTO list_daily (day, unsubscribes)
VALUES ((now() AT TIME ZONE 'UTC')::date, 1)
ON CONFLICT (day) DO UPDATE SET unsubscribes = list_daily.unsubscribes + 1;

-- name: export_subscriber
-- Every column of the row (tests/privacy/test_erasure.py holds it to the table).
SELECT id, email, name, status, tracking_consent, tracking_requested, tracking_withdrawn_at,
       created_at, signup_at, confirm_sent_at, confirmed_at, email_since, lang,
       (SELECT array_agg(t.slug ORDER BY t.slug) FROM topics t
        WHERE t.id = ANY(subscribers.topics_requested)) AS topics_requested
FROM subscribers
WHERE lower(email) = lower(:email);

-- name: export_consent_events
SELECT kind, topic, at, ip, user_agent, source, consent_text_version, method
FROM consent_events WHERE subscriber_id = :id ORDER BY at, id;

-- name: export_topics
SELECT t.slug, t.name, st.joined_at
FROM subscriber_topics st JOIN topics t ON t.id = st.topic_id
WHERE st.subscriber_id = :id ORDER BY t.slug;

-- name: export_opens
-- Through opens_readable (sql/161): the text of each value, whichever shape its row has.
SELECT o.campaign_id, c.name AS campaign_name, o.at, o.ip, o.user_agent, o.client, o.os,
       o.country, o.machine_reason
FROM opens_readable o JOIN campaigns c ON c.id = o.campaign_id
WHERE o.subscriber_id = :id ORDER BY o.at, o.campaign_id;

-- name: export_deliveries
SELECT d.campaign_id, c.name AS campaign_name, d.queued_at, d.sent_at, d.first_open_at
FROM deliveries d JOIN campaigns c ON c.id = d.campaign_id
WHERE d.subscriber_id = :id ORDER BY d.queued_at, d.campaign_id;

-- name: export_outbox
SELECT kind, campaign_id, attempts, run_at, created_at, last_error
FROM outbox WHERE subscriber_id = :id ORDER BY id;

-- name: export_address_changes
SELECT new_email, requested_at FROM address_changes WHERE subscriber_id = :id;

-- name: export_manage_links
-- The fresh links to the person's page (times only; the session's hash is a secret).
SELECT created_at, expires_at, used_at FROM manage_links WHERE subscriber_id = :id ORDER BY id;

-- name: export_soft_bounces
-- Emails to the person that came back with a temporary failure, kept BOUNCE_SOFT_WINDOW
-- (campaign 0: a confirmation email).
SELECT b.at, nullif(b.campaign_id, 0) AS campaign_id, c.name AS campaign_name
FROM soft_bounces b LEFT JOIN campaigns c ON c.id = b.campaign_id
WHERE b.subscriber_id = :id ORDER BY b.at, b.campaign_id;

-- name: export_held_refusals
-- An email the relay refused with a mailbox status at send time, held until the worker's
-- recent sends show the refusal is no burst (service/outbox/breaker.py); campaign 0: a one-off.
SELECT r.held_at, nullif(r.campaign_id, 0) AS campaign_id, c.name AS campaign_name, r.kind,
       r.reason
FROM held_refusals r LEFT JOIN campaigns c ON c.id = r.campaign_id
WHERE r.subscriber_id = :id ORDER BY r.held_at, r.campaign_id;

-- name: export_rate_limits
SELECT window_start, hits, last_at
FROM rate_limits WHERE scope = 'address' AND key = ANY (:keys::bytea[]) ORDER BY window_start;

-- name: journal_since
-- The erasure journal (of the database as it was before a restore), oldest first.
SELECT subscriber_id, created_at, erased_at FROM erasure_journal ORDER BY erased_at, subscriber_id;

-- name: find_journalled
-- The subscriber a journal row names, only if it is that very row (id and creation time):
-- a restored database may have given the id to someone else since.
SELECT id FROM subscribers WHERE id = :id AND created_at = :created_at;

-- name: advance_ids
-- After a restore: ids handed out after the backup (and erased since) are never handed
-- out again, so no old link can name a new subscriber.
SELECT setval(pg_get_serial_sequence('subscribers', 'id'),
              greatest(:highest::bigint, (SELECT last_value FROM subscribers_id_seq)));

-- name: copy_journal
-- The pre-restore journal into the restored database's, so a later restore has it too.
INSERT INTO erasure_journal (subscriber_id, created_at, erased_at)
SELECT * FROM unnest(:ids::bigint[], :created::timestamptz[], :erased::timestamptz[])
ON CONFLICT DO NOTHING;
