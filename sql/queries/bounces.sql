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
-- the subscriber with that address and the latest email sent to them no later than the
-- report's time, so a late report never reaches a sign-up made after the bounced email.
SELECT s.id,
       s.confirm_sent_at <= :at AS confirmation_before,
       (SELECT d.campaign_id FROM deliveries d
        WHERE d.subscriber_id = s.id AND d.sent_at <= :at
          AND (s.confirm_sent_at IS NULL OR d.sent_at >= s.confirm_sent_at)
        ORDER BY d.sent_at DESC LIMIT 1) AS campaign_id
FROM subscribers s
WHERE lower(s.email) = lower(:email);

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
