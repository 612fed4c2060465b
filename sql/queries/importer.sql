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
                             confirmed_at)
    SELECT email, name,
           CASE WHEN consented_at IS NULL THEN 'pending' ELSE 'active' END,
           consented_at IS NOT NULL AND tracking,
           consented_at IS NULL AND tracking,
           consented_at
    FROM import_staging
    WHERE import_id = :import_id
    ORDER BY line
    ON CONFLICT (lower(email)) DO NOTHING
    RETURNING id, email, status
),
joined AS (
    SELECT a.id, a.status, st.consented_at, st.source, st.tracking
    FROM added a
    JOIN import_staging st ON st.import_id = :import_id AND lower(st.email) = lower(a.email)
),
-- One call of record_consent (sql/139) for the whole chunk; read below, so it runs.
evidence AS (
    SELECT record_consent(array_agg(e)) AS rows
    FROM (
        SELECT ROW(id, CASE WHEN status = 'active' THEN 'confirm' ELSE 'signup' END,
                   coalesce(consented_at, now()), NULL, NULL, coalesce(source, 'import'),
                   :consent_text_version, 'import')::consent_evidence
        FROM joined
        UNION ALL
        SELECT ROW(id, 'tracking_granted', consented_at, NULL, NULL, source,
                   :consent_text_version, 'import')::consent_evidence
        FROM joined WHERE status = 'active' AND tracking
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
