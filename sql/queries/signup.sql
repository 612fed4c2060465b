-- Sign-up, confirmation and "this wasn't me" (service/signup/subscribe.py, service/signup/confirmation.py).

-- name: sign_up
-- The whole sign-up in one statement, with the same writes and one commit whatever the
-- address's state, so that neither the answer nor its timing tells whether the address
-- was new, pending or subscribed (service/signup/subscribe.py also answers no sooner than
-- SIGNUP_MIN_DURATION):
-- 1. a new address becomes a pending row; a pending one is refreshed (its purge clock
--    restarts; the latest sign-up's language is the one its emails and pages speak;
--    the name, the tracking wish and the topics are proposals that the confirmation page
--    shows to the person, who confirms or changes them); an active one is left alone.
--    Consent to tracking is never set here.
-- 2. the sign-up's evidence row (`record_consent`, sql/139); a new address counted in
--    the daily aggregate.
-- 3. unless a confirmation email is queued already: a claim on the address's daily
--    allowance of emails (`claim_email_allowance`, sql/139: atomic, ON CONFLICT locks
--    the row; NULL when refused) and, when it
--    is granted and the address is not subscribed, the email job and the wake-up of
--    every replica's outbox worker (delivered at commit). A subscribed address spends
--    its allowance too, which is what keeps the three cases writing the same rows.
WITH upserted AS (
    INSERT INTO subscribers AS s (email, name, tracking_requested, topics_requested, lang)
    VALUES (:email, :name, :tracking, :topics::bigint[], :lang)
    ON CONFLICT (lower(email)) DO UPDATE
        SET signup_at = now(), name = EXCLUDED.name,
            tracking_requested = EXCLUDED.tracking_requested,
            topics_requested = EXCLUDED.topics_requested, lang = EXCLUDED.lang
        WHERE s.status = 'pending'
    RETURNING id, (xmax = 0) AS created
),
-- A CTE that writes through a function runs only when read: the final SELECT reads it.
evidence AS (
    SELECT record_consent(array_agg(ROW(id, 'signup', NULL, :ip, :user_agent, :source,
                                        :consent_text_version, NULL, NULL)::consent_evidence)) AS rows
    FROM upserted
),
counted AS (
    INSERT INTO list_daily (day, signups)
    SELECT (now() AT TIME ZONE 'UTC')::date, 1 FROM upserted WHERE created
    ON CONFLICT (day) DO UPDATE SET signups = list_daily.signups + 1
),
queued AS (
    SELECT EXISTS (
        SELECT 1 FROM outbox o JOIN upserted u ON o.subscriber_id = u.id
        WHERE o.kind = 'confirm'
    ) AS already
),
claim AS (
    SELECT claim_email_allowance(:claim_key, to_timestamp(:window_start), :per_day,
                                 :min_interval) AS hits
    FROM queued WHERE NOT queued.already
),
-- upserted wrote the subscriber row: it stays locked until commit (sql/130).
job AS (
    INSERT INTO outbox (kind, subscriber_id)
    SELECT 'confirm', u.id FROM upserted u, claim WHERE claim.hits IS NOT NULL
    RETURNING id
)
SELECT (SELECT created FROM upserted) AS created,
       (SELECT already FROM queued) AS already_queued,
       (SELECT count(hits) FROM claim) > 0 AS claimed,
       (SELECT rows FROM evidence) AS evidence,
       (SELECT count(*) FROM (SELECT pg_notify('newsletter_outbox', id::text) FROM job) n) AS jobs;

-- name: count_confirmation
INSERT INTO list_daily (day, confirmations) VALUES ((now() AT TIME ZONE 'UTC')::date, 1)
ON CONFLICT (day) DO UPDATE SET confirmations = list_daily.confirmations + 1;

-- name: subscriber_state
-- What the confirmation pages need; `expired` is true for a pending sign-up older
-- than the confirmation period (never activated, purged later).
-- `topic_choices`: every topic, ticked where the subscriber is in it (active) or asked for
-- it (pending; the default topics when the sign-up named none), as JSON.
SELECT id, status, confirm_sent_at, name, tracking_requested, tracking_consent, confirmed_at, lang,
       topics_requested,
       extract(epoch FROM now() - confirmed_at)::float8 AS confirmed_age,
       (status = 'pending' AND signup_at < now() - make_interval(secs => :max_age)) AS expired,
       (confirm_sent_at IS NULL
        OR confirm_sent_at > now() - make_interval(secs => :scanner_window)) AS in_scanner_window,
       (SELECT coalesce(json_agg(json_build_object(
                   'slug', t.slug, 'name', t.name, 'description', t.description,
                   'checked', CASE WHEN s.status = 'active'
                                   THEN EXISTS (SELECT 1 FROM subscriber_topics st
                                                WHERE st.topic_id = t.id
                                                  AND st.subscriber_id = s.id)
                                   ELSE CASE WHEN s.topics_requested IS NULL THEN t.is_default
                                             ELSE t.id = ANY(s.topics_requested) END
                              END) ORDER BY t.name, t.slug), '[]')
        FROM topics t)::text AS topic_choices
FROM subscribers s WHERE id = :id;

-- name: activate
UPDATE subscribers SET status = 'active', confirmed_at = now()
WHERE id = :id AND status = 'pending'
  AND signup_at >= now() - make_interval(secs => :max_age)
RETURNING id;

-- name: lock_choices
-- The confirmation form's choices apply to the row as it is now (a pixel batch holding
-- it FOR SHARE is waited for, as a tracking withdrawal must).
SELECT name, tracking_consent FROM subscribers WHERE id = :id FOR UPDATE;

-- name: set_choices
-- The name as the person confirmed it; the sign-up's tracking wish is answered.
UPDATE subscribers SET name = :name, tracking_requested = false WHERE id = :id;

-- name: delete_pending_jobs
-- Before deleting a pending row: waits for an in-flight send of its job, so the row
-- lock order is always outbox then subscribers (the worker's order too).
DELETE FROM outbox
WHERE subscriber_id = :id
  AND EXISTS (SELECT 1 FROM subscribers WHERE id = :id AND status = 'pending');

-- name: delete_pending
-- "This wasn't me": journalled like an erasure, so a backup restore cannot bring the
-- sign-up (and its queued confirmation email) back.
WITH gone AS (
    DELETE FROM subscribers WHERE id = :id AND status = 'pending' RETURNING id, created_at
),
journal AS (
    INSERT INTO erasure_journal (subscriber_id, created_at)
    SELECT id, created_at FROM gone
    ON CONFLICT DO NOTHING
)
SELECT id FROM gone;
