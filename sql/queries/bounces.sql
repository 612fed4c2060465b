-- Bounces and complaints (service/bounces/actions.py).

-- name: count_event
-- The anonymous counter; kept after the person is erased.
INSERT INTO bounce_counts (campaign_id, event, source, reason, count)
VALUES (:campaign_id, :event, :source, :reason, 1)
ON CONFLICT (campaign_id, event, source, reason)
DO UPDATE SET count = bounce_counts.count + 1;

-- name: subscriber_exists
SELECT EXISTS (SELECT 1 FROM subscribers WHERE id = :id);

-- name: add_soft_bounce
-- One row per email; nothing when the subscriber is gone or the email already counted.
INSERT INTO soft_bounces (subscriber_id, campaign_id)
SELECT id, :campaign_id FROM subscribers WHERE id = :id
ON CONFLICT DO NOTHING
RETURNING 1;

-- name: recent_soft_bounces
SELECT count(*) FROM soft_bounces
WHERE subscriber_id = :id AND at > now() - make_interval(secs => :window);

-- name: forget_old_soft_bounces
DELETE FROM soft_bounces WHERE at <= now() - make_interval(secs => :window);

-- name: recipient_by_address
-- For reports that name only an address (provider webhooks, a mailbox without VERP):
-- the subscriber with that address and the latest email sent to it between :since
-- (NULL: any time) and the report's time :at, so a late report never reaches a sign-up
-- made after the bounced email, nor an email that went to the address the subscriber
-- had before an address change (email_since).
SELECT s.id,
       s.confirm_sent_at <= :at
           AND s.confirm_sent_at >= coalesce(:since::timestamptz, '-infinity')
           AND s.confirm_sent_at >= coalesce(s.email_since, '-infinity')
           AS confirmation_before,
       (SELECT d.campaign_id FROM deliveries d
        WHERE d.subscriber_id = s.id AND d.sent_at <= :at
          AND d.sent_at >= coalesce(:since::timestamptz, '-infinity')
          AND d.sent_at >= coalesce(s.email_since, '-infinity')
          AND (s.confirm_sent_at IS NULL OR d.sent_at >= s.confirm_sent_at)
        ORDER BY d.sent_at DESC LIMIT 1) AS campaign_id
FROM subscribers s
WHERE lower(s.email) = lower(:email);

-- name: address_unchanged_since
-- A report found by a return-path token acts only while the subscriber's address is the
-- one the email went to: unchanged since :sent_after (NULL, a token of an earlier
-- release: never changed). Locks the row, so an address change waits for the report.
SELECT email_since IS NULL OR email_since <= :sent_after::timestamptz
FROM subscribers WHERE id = :id FOR UPDATE;

-- name: claim_webhook_token
-- A provider's one-time token (Mailgun's signature token): a row while it is fresh, so
-- a replay inside the freshness window finds it and is refused. Older rows go first.
WITH purged AS (
    DELETE FROM webhook_tokens WHERE at < now() - make_interval(secs => :window)
)
INSERT INTO webhook_tokens (provider, token) VALUES (:provider, :token)
ON CONFLICT DO NOTHING
RETURNING 1;

-- name: release_webhook_token
-- The event could not be processed (the database went away): the provider's retry of the
-- same signed request must be taken.
DELETE FROM webhook_tokens WHERE provider = :provider AND token = :token;

-- name: campaign_bounces
-- A campaign's bounce and complaint counters, summed over intakes and reasons.
SELECT event, sum(count)::bigint AS count
FROM bounce_counts WHERE campaign_id = :campaign_id GROUP BY event;

-- name: campaign_bounce_reasons
SELECT event, source, reason, count
FROM bounce_counts WHERE campaign_id = :campaign_id
ORDER BY event, count DESC, source, reason;

-- name: mailbox_lock
-- One replica polls the bounce mailbox at a time (held until the poll's transaction ends).
SELECT pg_try_advisory_xact_lock(hashtext('newsletter.bounces.imap'));
