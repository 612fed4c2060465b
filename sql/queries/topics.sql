-- Topics and who is in them (service/topics/).

-- name: list_topics
-- With the count of active subscribers of each (the dashboard and GET /admin/api/topics),
-- from the counts kept with the writes (sql/162): a few dozen rows, however many
-- memberships there are, instead of reading every membership of each topic and its
-- subscriber (a default topic's count was the whole list).
SELECT t.id, t.slug, t.name, t.description, t.is_default, t.welcome_campaign_id,
       c.subject AS welcome_subject, c.html AS welcome_html, c.text AS welcome_text,
       coalesce(m.n, 0)::bigint AS subscribers
FROM topics t
LEFT JOIN campaigns c ON c.id = t.welcome_campaign_id
LEFT JOIN (SELECT topic_id, sum(n) AS n FROM topic_member_counts GROUP BY topic_id) m
       ON m.topic_id = t.id
ORDER BY t.slug;

-- name: get_topic
SELECT t.id, t.slug, t.name, t.description, t.is_default, t.welcome_campaign_id,
       c.subject AS welcome_subject, c.html AS welcome_html, c.text AS welcome_text,
       (SELECT coalesce(sum(m.n), 0) FROM topic_member_counts m
        WHERE m.topic_id = t.id)::bigint AS subscribers
FROM topics t LEFT JOIN campaigns c ON c.id = t.welcome_campaign_id
WHERE t.slug = :slug;

-- name: insert_topic
INSERT INTO topics (slug, name, description, is_default)
VALUES (:slug, :name, :description, :is_default)
ON CONFLICT (slug) DO NOTHING
RETURNING id;

-- name: update_topic
UPDATE topics
SET name = coalesce(:name, name),
    description = coalesce(:description, description),
    is_default = coalesce(:is_default, is_default)
WHERE slug = :slug
RETURNING id, welcome_campaign_id;

-- name: insert_welcome
-- A topic's welcome message: a campaign of its own (sql/142), for this topic only.
INSERT INTO campaigns (name, subject, html, text, topic_ids, welcome)
VALUES (:name, :subject, :html, :text, ARRAY[:topic_id::bigint], true)
RETURNING id;

-- name: set_welcome
UPDATE topics SET welcome_campaign_id = :campaign_id WHERE id = :topic_id;

-- name: update_welcome
UPDATE campaigns SET subject = :subject, html = :html, text = :text WHERE id = :id;

-- name: delete_topic
-- Memberships go with it (cascade); its welcome campaign stays, with its statistics.
DELETE FROM topics WHERE slug = :slug RETURNING id;

-- name: topic_ids
-- The ids of these slugs; any slug not found is unknown.
SELECT id, slug FROM topics WHERE slug = ANY(:slugs::text[]);

-- name: default_topic_ids
SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM topics WHERE is_default;

-- name: topics_of
-- A subscriber's topics, with every other topic, for a page to show as choices.
SELECT t.id, t.slug, t.name, t.description,
       EXISTS (SELECT 1 FROM subscriber_topics st
               WHERE st.topic_id = t.id AND st.subscriber_id = :subscriber_id) AS member
FROM topics t
ORDER BY t.name, t.slug;

-- name: join_topics
-- Joins the ones of :topic_ids the subscriber is not in yet; returns their slugs (each
-- gets its consent evidence). The caller holds the subscriber row (sql/131).
WITH joined AS (
    INSERT INTO subscriber_topics (topic_id, subscriber_id)
    SELECT t.id, :subscriber_id FROM topics t WHERE t.id = ANY(:topic_ids::bigint[])
    ON CONFLICT DO NOTHING
    RETURNING topic_id
)
SELECT t.id, t.slug, t.welcome_campaign_id
FROM joined j JOIN topics t ON t.id = j.topic_id
ORDER BY t.slug;

-- name: leave_topics
-- Leaves those of :topic_ids the subscriber is in; returns their slugs and how many
-- topics are left.
WITH left_ AS (
    DELETE FROM subscriber_topics
    WHERE subscriber_id = :subscriber_id AND topic_id = ANY(:topic_ids::bigint[])
    RETURNING topic_id
)
SELECT t.slug
FROM left_ l JOIN topics t ON t.id = l.topic_id
ORDER BY t.slug;

-- name: count_memberships
SELECT count(*) FROM subscriber_topics WHERE subscriber_id = :subscriber_id;

-- name: lock_subscriber
SELECT status FROM subscribers WHERE id = :id FOR UPDATE;

-- name: queue_welcome
-- The welcome emails of the topics just joined: one delivery per (welcome campaign,
-- subscriber), which is also what makes each one go once, and its job; counted in the
-- campaign's recipients. The caller holds the subscriber row (sql/130).
WITH queued AS (
    INSERT INTO deliveries (campaign_id, subscriber_id)
    SELECT c, :subscriber_id FROM unnest(:campaign_ids::bigint[]) AS c
    ON CONFLICT DO NOTHING
    RETURNING campaign_id
), jobs AS (
    -- A welcome the circuit breaker paused waits with its other jobs (sql/133).
    INSERT INTO outbox (kind, subscriber_id, campaign_id, run_at)
    SELECT 'welcome', :subscriber_id, q.campaign_id,
           CASE WHEN c.paused_at IS NULL THEN now() ELSE 'infinity' END
    FROM queued q JOIN campaigns c ON c.id = q.campaign_id
    RETURNING campaign_id
), counted AS (
    UPDATE campaigns c SET recipients = c.recipients + 1,
                           first_sent_at = coalesce(c.first_sent_at, now())
    FROM jobs j WHERE c.id = j.campaign_id
)
SELECT count(*) FROM (SELECT pg_notify('newsletter_outbox', '') FROM jobs) n;

-- name: campaign_topic_ids
-- The topics a campaign was for (NULL: a campaign for everyone, or none such).
SELECT topic_ids FROM campaigns WHERE id = :id;

-- name: topic_names
-- The names of the subscriber's topics among :topic_ids (NULL: all of them).
SELECT t.name FROM subscriber_topics st JOIN topics t ON t.id = st.topic_id
WHERE st.subscriber_id = :subscriber_id
  AND (:topic_ids::bigint[] IS NULL OR t.id = ANY(:topic_ids::bigint[]))
ORDER BY t.name;

-- name: form_choices
-- The sign-up form's checkboxes: every topic, the default ones ticked.
SELECT slug, name, is_default FROM topics ORDER BY name, slug;

-- name: subscriber_lang
-- The language of the unsubscribe pages (the subscriber's; NULL when there is none).
SELECT lang FROM subscribers WHERE id = :subscriber_id;
