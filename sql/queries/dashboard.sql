-- name: insert_session
-- A new dashboard session; expired ones are removed by `delete_expired_sessions`.
INSERT INTO admin_sessions (id_hash, token_hash, csrf, expires_at)
VALUES (:id_hash, :token_hash, :csrf, now() + make_interval(secs => :max_age));

-- name: delete_expired_sessions
DELETE FROM admin_sessions WHERE expires_at <= now();

-- name: get_session
SELECT token_hash, csrf, expires_at
FROM admin_sessions
WHERE id_hash = :id_hash AND expires_at > now();

-- name: delete_session
DELETE FROM admin_sessions WHERE id_hash = :id_hash;

-- name: subscribers_by_status
-- From the deltas the triggers add with every write (sql/153): a few dozen rows, whatever
-- the size of the list, and exact (a status's deltas add up to its count).
SELECT status, sum(n)::bigint AS n FROM subscriber_counts GROUP BY status;

-- name: list_daily_since
-- Anonymous daily counters (no personal data: they survive erasures).
SELECT day, signups, confirmations, unsubscribes
FROM list_daily
WHERE day >= :since
ORDER BY day;

-- name: list_totals
SELECT coalesce(sum(signups), 0)::bigint AS signups,
       coalesce(sum(confirmations), 0)::bigint AS confirmations,
       coalesce(sum(unsubscribes), 0)::bigint AS unsubscribes
FROM list_daily
WHERE day >= :since;

-- name: campaign_list
-- Every campaign with its anonymous total counters (newest first). A topic's welcome
-- message (`welcome`, sql/142) is listed for its statistics, with its topic's name (NULL
-- once the topic is deleted).
SELECT c.id, c.name, c.subject, c.created_at, c.first_sent_at,
       c.recipients, c.sent, c.failed, c.paused_reason, c.scheduled_at, c.welcome,
       (SELECT t.name FROM topics t WHERE t.welcome_campaign_id = c.id) AS welcome_topic,
       coalesce(t.opens, 0) AS opens,
       coalesce(t.machine_opens, 0) AS machine_opens,
       coalesce(t.unique_opens, 0) AS unique_opens
FROM campaigns c
LEFT JOIN campaign_counts t
       ON t.campaign_id = c.id AND t.dimension = 'total' AND t.key = ''
ORDER BY c.id DESC
LIMIT :limit;

-- name: campaign_by_id
SELECT c.id, c.name, c.topic_ids IS NOT NULL AS has_topics, c.subject, c.html, c.text, c.created_at, c.first_sent_at, c.recipients,
       c.sent, c.failed, c.paused_at, c.paused_reason, c.scheduled_at, c.welcome,
       (SELECT t.name FROM topics t WHERE t.welcome_campaign_id = c.id) AS welcome_topic
FROM campaigns c
WHERE c.id = :id;

-- name: topic_send_preview
-- The send step of a campaign naming topics: the topics' names, how many active
-- subscribers of any of them it goes to (each once, however many of the topics they are
-- in) and how many of those were queued it already (a second send skips them).
-- It reads every recipient, as the send it precedes writes a row for each: shown once
-- per send, not on a page that is viewed often (issue 31). The topics' member counts
-- (sql/162) cannot replace it: a person in two of the topics is one recipient, and
-- `already` needs each recipient's delivery.
WITH recipients AS (
    SELECT s.id FROM subscribers s
    WHERE s.status = 'active'
      AND EXISTS (
          SELECT 1 FROM subscriber_topics st
          WHERE st.subscriber_id = s.id
            AND st.topic_id = ANY((SELECT topic_ids FROM campaigns WHERE id = :id)::bigint[])
      )
)
SELECT (SELECT coalesce(array_agg(t.name ORDER BY t.name), '{}') FROM topics t
        WHERE t.id = ANY((SELECT topic_ids FROM campaigns WHERE id = :id)::bigint[])) AS topics,
       (SELECT count(*) FROM recipients) AS recipients,
       (SELECT count(*) FROM recipients r
        WHERE EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.campaign_id = :id AND d.subscriber_id = r.id)) AS already;

-- name: campaign_delivered_count
-- Subscribers (still on the list) already queued for this campaign: a second send skips them.
-- One campaign's part of the deliveries primary key: as many rows as it was sent to.
SELECT count(*) FROM deliveries WHERE campaign_id = :id;

-- name: campaign_sending
-- Whether emails of this campaign still wait in the outbox (the page then refreshes
-- itself). EXISTS stops at the first job; the counters cannot tell, as an erased
-- subscriber's job is deleted without being counted as sent or failed.
-- With none of its jobs left, EXISTS reads the whole outbox: only the emails still
-- waiting, bounded by the sends in progress (see get_campaign in campaigns.sql).
SELECT EXISTS (SELECT 1 FROM outbox WHERE kind = 'campaign' AND campaign_id = :id);
