-- Campaigns: storing, listing, queueing a send, rendering one email, recipients export.

-- name: insert_campaign
INSERT INTO campaigns (name, subject, html, text, topic_ids, translations)
VALUES (:name, :subject, :html, :text, :topic_ids::bigint[], :translations::jsonb)
RETURNING id;

-- name: get_campaign
-- `queued` reads the outbox, which has no index on campaign_id (each would cost every
-- queued email an insertion, sql/111): it holds only the emails still waiting (a sent
-- one's row is deleted), so it grows with the sends in progress, not with the history
-- (issue 31's review of the admin queries).
SELECT c.id, c.name, c.subject, c.html, c.text, c.created_at, c.first_sent_at,
       (SELECT array_agg(t.slug ORDER BY t.slug) FROM topics t WHERE t.id = ANY(c.topic_ids))
           AS topics,
       c.recipients, c.sent, c.failed, c.paused_at, c.paused_reason, c.scheduled_at,
       (SELECT count(*) FROM outbox o WHERE o.campaign_id = c.id) AS queued
FROM campaigns c
WHERE c.id = :id;

-- name: list_campaigns
-- Newest first; `before` is the last id of the previous page (keyset pagination).
SELECT id, name, subject, created_at, first_sent_at, recipients, sent, failed,
       paused_at, paused_reason, scheduled_at
FROM campaigns
WHERE id < :before AND NOT welcome
ORDER BY id DESC
LIMIT :limit;

-- name: campaign_exists
SELECT EXISTS (SELECT 1 FROM campaigns WHERE id = :id);

-- name: campaign_is_welcome
-- Whether the campaign is a topic's welcome message (sql/142); NULL: no such campaign.
SELECT welcome FROM campaigns WHERE id = :id;

-- name: campaign_has_topics
SELECT topic_ids IS NOT NULL FROM campaigns WHERE id = :id;

-- name: lock_campaign_send
-- Serialises two sends of the same campaign (the second one then finds everybody queued)
-- with a transaction-level advisory lock ("nlca"), not a row lock: the outbox worker updates the
-- campaign row after each email, and must not wait for a send that waits for it.
SELECT pg_advisory_xact_lock(1852597089, (:id % 2147483647)::int);

-- name: count_active
-- The send step's recipient count, from the counts kept with the writes (sql/153).
SELECT coalesce(sum(n), 0)::bigint FROM subscriber_counts WHERE status = 'active';

-- name: count_topic_recipients
-- count_active for a campaign naming topics: the active subscribers of any of them.
-- Counted, not read from topic_member_counts (sql/162): someone in two of the topics
-- is one recipient, which per-topic counts cannot tell; asked once per send.
SELECT count(*) FROM subscribers s
WHERE s.status = 'active'
  AND EXISTS (
      SELECT 1 FROM subscriber_topics st
      WHERE st.subscriber_id = s.id
        AND st.topic_id = ANY((SELECT topic_ids FROM campaigns WHERE id = :campaign_id)::bigint[])
  );

-- name: queue_campaign
-- One delivery row and one outbox job per active subscriber not yet queued for this
-- campaign (sends of one campaign are serialised by lock_campaign_send, and the
-- deliveries primary key would refuse a second row). Every recipient is locked FOR KEY
-- SHARE until commit, which stands for the foreign keys (sql/130): an erasure that
-- commits first is passed over, one that starts later waits and then deletes the rows.
WITH recipients AS (
    SELECT s.id
    FROM subscribers s
    WHERE s.status = 'active'
      AND NOT EXISTS (
          SELECT 1 FROM deliveries d
          WHERE d.campaign_id = :campaign_id AND d.subscriber_id = s.id
      )
    FOR KEY SHARE OF s
), queued AS (
    INSERT INTO deliveries (campaign_id, subscriber_id)
    SELECT :campaign_id, id FROM recipients
), jobs AS (
    -- A paused campaign's new jobs wait with the others (run_at infinity, sql/133).
    INSERT INTO outbox (kind, subscriber_id, campaign_id, run_at)
    SELECT 'campaign', id, :campaign_id,
           (SELECT CASE WHEN paused_at IS NULL THEN now() ELSE 'infinity' END
            FROM campaigns WHERE id = :campaign_id)
    FROM recipients
    RETURNING 1
)
SELECT count(*) FROM jobs;

-- name: queue_topic_campaign
-- queue_campaign for a campaign that names topics: its recipients are the active
-- subscribers of any of them, each once (a semi-join: one row per subscriber however many
-- of the topics they are in). A statement of its own, without an "or everyone" branch, so
-- that PostgreSQL can join the memberships as a set instead of probing them per subscriber.
WITH recipients AS (
    SELECT s.id
    FROM subscribers s
    WHERE s.status = 'active'
      AND EXISTS (
          SELECT 1 FROM subscriber_topics st
          WHERE st.subscriber_id = s.id
            AND st.topic_id = ANY((SELECT topic_ids FROM campaigns WHERE id = :campaign_id)::bigint[])
      )
      AND NOT EXISTS (
          SELECT 1 FROM deliveries d
          WHERE d.campaign_id = :campaign_id AND d.subscriber_id = s.id
      )
    FOR KEY SHARE OF s
), queued AS (
    INSERT INTO deliveries (campaign_id, subscriber_id)
    SELECT :campaign_id, id FROM recipients
), jobs AS (
    INSERT INTO outbox (kind, subscriber_id, campaign_id, run_at)
    SELECT 'campaign', id, :campaign_id,
           (SELECT CASE WHEN paused_at IS NULL THEN now() ELSE 'infinity' END
            FROM campaigns WHERE id = :campaign_id)
    FROM recipients
    RETURNING 1
)
SELECT count(*) FROM jobs;

-- name: add_recipients
UPDATE campaigns
SET recipients = recipients + :queued,
    first_sent_at = CASE WHEN :queued > 0 THEN coalesce(first_sent_at, now())
                         ELSE first_sent_at END
WHERE id = :campaign_id;

-- name: notify_outbox
-- Wakes the outbox worker of every replica (service/outbox/sender.py listens on this channel).
SELECT pg_notify('newsletter_outbox', '');

-- name: active_recipients
-- Streamed through a server-side cursor by the recipients export.
-- The same recipients rule as queue_campaign: of the campaign's topics, when it names some.
SELECT s.id, s.email, s.name, s.tracking_consent,
       s.tracking_withdrawn_at IS NOT NULL AS tracking_withdrawn
FROM subscribers s, (SELECT topic_ids FROM campaigns WHERE id = :campaign_id) target
WHERE s.status = 'active'
  AND (target.topic_ids IS NULL OR EXISTS (
      SELECT 1 FROM subscriber_topics st
      WHERE st.subscriber_id = s.id AND st.topic_id = ANY(target.topic_ids)
  ))
ORDER BY s.id;

-- name: mail_for_jobs
-- The batch composer's view of many claimed campaign jobs at once: one row per job
-- whose subscriber is still active and whose delivery has not gone out.
SELECT d.campaign_id, d.subscriber_id, s.email, s.name, s.tracking_consent, s.lang,
       s.tracking_withdrawn_at IS NOT NULL AS tracking_withdrawn
FROM unnest(:campaign_ids::bigint[], :subscriber_ids::bigint[]) AS j (campaign_id, subscriber_id)
JOIN deliveries d ON d.campaign_id = j.campaign_id AND d.subscriber_id = j.subscriber_id
JOIN subscribers s ON s.id = d.subscriber_id
WHERE d.sent_at IS NULL
  AND s.status = 'active';

-- name: campaign_templates
-- `list_id`: the slug of the campaign's first topic (RFC 2919's List-Id), NULL for none.
SELECT id, subject, html, text, translations::text AS translations,
       topic_ids IS NOT NULL AS has_topics,
       (SELECT t.slug FROM topics t WHERE t.id = ANY(campaigns.topic_ids)
        ORDER BY t.slug LIMIT 1) AS list_id
FROM campaigns WHERE id = ANY(:ids::bigint[]);

-- name: update_campaign
-- An edit before the first send (PATCH /admin/api/campaigns/{id}): each column changes
-- only when it is in :fields. Run under the campaign's send lock (lock_campaign_send), so
-- a send starting at the same moment either queues the edited campaign or finds the edit
-- refused; no row when the send has started (or it is a topic's welcome message).
UPDATE campaigns SET
    name = CASE WHEN 'name' = ANY(:fields::text[]) THEN :name ELSE name END,
    subject = CASE WHEN 'subject' = ANY(:fields::text[]) THEN :subject ELSE subject END,
    html = CASE WHEN 'html' = ANY(:fields::text[]) THEN :html ELSE html END,
    text = CASE WHEN 'text' = ANY(:fields::text[]) THEN :text ELSE text END,
    topic_ids = CASE WHEN 'topics' = ANY(:fields::text[]) THEN :topic_ids::bigint[]
                     ELSE topic_ids END,
    translations = CASE WHEN 'translations' = ANY(:fields::text[]) THEN :translations::jsonb
                        ELSE translations END
WHERE id = :id AND first_sent_at IS NULL AND NOT welcome
RETURNING id;

-- name: edit_state
-- Why an edit found no row: NULL (no such campaign), else whether its send started.
SELECT first_sent_at IS NOT NULL AS started, welcome FROM campaigns WHERE id = :id;

-- name: campaign_for_mail
-- One campaign as the composer renders it (campaign_templates for one id).
SELECT id, subject, html, text, translations::text AS translations,
       topic_ids IS NOT NULL AS has_topics,
       (SELECT t.slug FROM topics t WHERE t.id = ANY(campaigns.topic_ids)
        ORDER BY t.slug LIMIT 1) AS list_id
FROM campaigns WHERE id = :id;

-- name: preview_subscriber
-- The subscriber a preview renders for, by address (case-insensitive like the unique index).
SELECT id, email, name, lang, tracking_consent,
       tracking_withdrawn_at IS NOT NULL AS tracking_withdrawn
FROM subscribers WHERE lower(email) = lower(:email);

-- name: queue_test
-- A test send: one outbox job naming no subscriber and no campaign's send (sql/160).
WITH job AS (
    INSERT INTO outbox (kind, test_campaign_id, test_email)
    VALUES ('campaign_test', :campaign_id, :email)
    RETURNING id
)
SELECT id, pg_notify('newsletter_outbox', id::text) IS NULL AS notified FROM job;

-- name: test_job
SELECT test_campaign_id, test_email FROM outbox WHERE id = :id;
