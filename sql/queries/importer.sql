-- Importing an existing list (service/admin/importer.py).

-- name: import_staged
-- New addresses only (an address on the list already is left alone, as a sign-up
-- leaves it): active with their consent evidence (a `confirm` event at consented_at,
-- method `import`, and `tracking_granted` when they agreed to open measurement), or
-- pending with a `signup` event and a confirmation job; the jobs' run times are spread
-- :rate a second apart, after the :paced_before jobs of the import's earlier chunks, so
-- the outbox paces the re-permission mail.
WITH added AS (
    INSERT INTO subscribers (email, name, status, tracking_consent, tracking_requested,
                             confirmed_at, topics_requested, lang)
    SELECT email, name,
           CASE WHEN consented_at IS NULL THEN 'pending' ELSE 'active' END,
           consented_at IS NOT NULL AND tracking,
           consented_at IS NULL AND tracking,
           consented_at,
           CASE WHEN consented_at IS NULL THEN topic_ids END,
           lang
    FROM import_staging
    WHERE import_id = :import_id
    ORDER BY line
    ON CONFLICT (lower(email)) DO NOTHING
    RETURNING id, email, status
),
joined AS (
    SELECT a.id, a.status, st.consented_at, st.source, st.tracking, st.topic_ids
    FROM added a
    JOIN import_staging st ON st.import_id = :import_id AND lower(st.email) = lower(a.email)
),
-- An active line joins its topics (the default topics when it names none), with the
-- consent it came with; a pending line's topics wait for its confirmation (above).
-- No welcome email: the list was not just confirming.
members AS (
    INSERT INTO subscriber_topics (topic_id, subscriber_id, joined_at)
    SELECT t.id, j.id, j.consented_at
    FROM joined j
    JOIN topics t ON t.id = ANY(coalesce(j.topic_ids, :default_topic_ids::bigint[]))
    WHERE j.status = 'active'
    RETURNING topic_id, subscriber_id
),
-- One call of record_consent (sql/139, sql/147) for the whole chunk; read below, so it runs.
evidence AS (
    SELECT record_consent(array_agg(e)) AS rows
    FROM (
        SELECT ROW(id, CASE WHEN status = 'active' THEN 'confirm' ELSE 'signup' END,
                   coalesce(consented_at, now()), NULL, NULL, coalesce(source, 'import'),
                   :consent_text_version, 'import', NULL)::consent_evidence
        FROM joined
        UNION ALL
        SELECT ROW(id, 'tracking_granted', consented_at, NULL, NULL, source,
                   :consent_text_version, 'import', NULL)::consent_evidence
        FROM joined WHERE status = 'active' AND tracking
        UNION ALL
        SELECT ROW(j.id, 'topic_joined', j.consented_at, NULL, NULL, j.source,
                   :consent_text_version, 'import', t.slug)::consent_evidence
        FROM members m JOIN joined j ON j.id = m.subscriber_id JOIN topics t ON t.id = m.topic_id
    ) AS events (e)
),
-- added inserted the subscriber rows: they stay locked until commit (sql/130).
jobs AS (
    INSERT INTO outbox (kind, subscriber_id, run_at)
    SELECT 'confirm', id,
           now() + make_interval(
               secs => (:paced_before + row_number() OVER (ORDER BY id) - 1) / :rate::float8)
    FROM added WHERE status = 'pending'
    RETURNING 1
)
SELECT (SELECT count(*) FROM added WHERE status = 'active') AS imported,
       (SELECT count(*) FROM added WHERE status = 'pending') AS pending,
       (SELECT count(*) FROM jobs) AS jobs,
       (SELECT rows FROM evidence) AS evidence,
       pg_notify('newsletter_outbox', '') IS NULL AS notified;

-- name: clear_staging
DELETE FROM import_staging WHERE import_id = :import_id;

-- name: topics
-- Every topic's slug and id, read once per import: lines name topics by slug.
SELECT id, slug, is_default FROM topics;
