-- Unique opens count people (issue 27).
--
-- Until now the first fetch of a tracked subscriber's pixel set deliveries.first_open_at
-- and counted the unique open, whoever fetched it: an Apple Mail Privacy Protection
-- prefetch, a mail scanner or a headless preview used up the person's unique open, and a
-- campaign whose only open was a machine's showed a 100 % open rate. The recorder now
-- gives the unique open to the person's first own open (sql/queries/pixel.sql); this
-- migration corrects what was counted before, from the open events that still exist.
--
-- For each delivery whose first_open_at is the time of a stored machine open (and of no
-- stored human open at that same instant):
--   * the unique open is taken back from every campaign_counts row that machine open
--     was counted in (total, hour, country, client, reason, tracking = personal);
--   * the person's earliest own open still stored, if any, gets it instead (its rows)
--     and becomes first_open_at; without one, first_open_at becomes NULL.
--
-- What cannot be recomputed, and stays as it was counted:
--   * unique opens of people whose open events are gone: erased subscribers, tracking
--     withdrawn (their events and first_open_at were deleted, the anonymous counters
--     kept), and events older than the retention period (OPEN_RETENTION). Some of these
--     may still be a machine's open counted as unique;
--   * a delivery whose first machine open and first human open share the same instant
--     (which of the two was counted is not recorded): left as a person's.
-- Anonymous opens (no consent) never had unique opens, so nothing changes for them.
CREATE TEMPORARY TABLE unique_fix ON COMMIT DROP AS
SELECT d.campaign_id, d.subscriber_id, m.at AS machine_at, m.country AS machine_country,
       m.client AS machine_client, m.machine_reason, h.at AS human_at,
       h.country AS human_country, h.client AS human_client
FROM deliveries d
JOIN LATERAL (
    SELECT o.at, o.country, o.client, o.machine_reason
    FROM opens o
    WHERE o.subscriber_id = d.subscriber_id AND o.campaign_id = d.campaign_id
      AND o.at = d.first_open_at
    ORDER BY o.machine_reason NULLS FIRST, o.id
    LIMIT 1
) m ON m.machine_reason IS NOT NULL
LEFT JOIN LATERAL (
    SELECT o.at, o.country, o.client
    FROM opens o
    WHERE o.subscriber_id = d.subscriber_id AND o.campaign_id = d.campaign_id
      AND o.machine_reason IS NULL
    ORDER BY o.at, o.id
    LIMIT 1
) h ON true
WHERE d.first_open_at IS NOT NULL;

WITH moves AS (
    SELECT f.campaign_id, -1 AS delta, f.machine_at AS at, f.machine_country AS country,
           f.machine_client AS client, f.machine_reason AS reason
    FROM unique_fix f
    UNION ALL
    SELECT f.campaign_id, 1, f.human_at, f.human_country, f.human_client, NULL
    FROM unique_fix f
    WHERE f.human_at IS NOT NULL
),
keyed AS (
    SELECT m.campaign_id, dim.dimension, dim.key, sum(m.delta) AS delta
    FROM moves m
    JOIN campaigns c ON c.id = m.campaign_id
    CROSS JOIN LATERAL (VALUES
        ('total', ''),
        ('hour', CASE WHEN c.first_sent_at IS NOT NULL THEN
                     greatest(0, floor(extract(epoch FROM m.at - c.first_sent_at) / 3600))::bigint::text
                 END),
        ('country', coalesce(m.country, 'unknown')),
        ('client', coalesce(m.client, 'unknown')),
        ('reason', m.reason),
        ('tracking', 'personal')
    ) AS dim (dimension, key)
    WHERE dim.key IS NOT NULL
    GROUP BY m.campaign_id, dim.dimension, dim.key
)
UPDATE campaign_counts cc
SET unique_opens = greatest(0, cc.unique_opens + k.delta)
FROM keyed k
WHERE cc.campaign_id = k.campaign_id AND cc.dimension = k.dimension AND cc.key = k.key
  AND k.delta <> 0;

UPDATE deliveries d
SET first_open_at = f.human_at
FROM unique_fix f
WHERE d.campaign_id = f.campaign_id AND d.subscriber_id = f.subscriber_id;
