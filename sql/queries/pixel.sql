-- name: record_opens
-- One group commit for a batch of pixel fetches, in one statement.
-- An event names its subscriber (a personal pixel) or not (a campaign-only pixel, NULL
-- subscriber_id). Events of subscribers or campaigns that no longer exist vanish in the
-- joins. The subscriber rows are read FOR SHARE: an erasure or a tracking withdrawal that
-- starts after this point waits for the commit (and then deletes what this batch wrote);
-- one that committed before makes the event anonymous or drops it.
-- A personal open event is written only when the tracking mode allows it for that
-- subscriber (`personal_tracking`, sql/139, the rule service/tracking/policy.py states
-- in Python); the anonymous campaign_counts move for every live event.
-- Unique opens count people: the first open *by the person* (no machine_reason) of a
-- tracked subscriber for a campaign, decided by the UPDATE of deliveries.first_open_at
-- (row-locked, so two replicas cannot both count it). A machine open (a proxy prefetch,
-- a scanner, a headless preview) never sets first_open_at, so it cannot spend the
-- person's own first open (issue 27; sql/140 corrected the counters written before).
-- Times arrive as epoch seconds (float8): no datetime object per open in the service.
WITH batch AS MATERIALIZED (
    -- Materialized, as it was while it held a window function: the batch is planned as
    -- the few rows it is, and its joins stay index look-ups (inlined, the pixel bench
    -- lost a fifth of its throughput).
    SELECT e.subscriber_id, e.campaign_id, to_timestamp(e.epoch) AS at, e.ip, e.user_agent,
           e.client, e.os, e.country, e.reason
    FROM unnest(:subscriber_ids::bigint[], :campaign_ids::bigint[], :ats::float8[],
                :ips::text[], :user_agents::text[], :clients::text[], :oses::text[],
                :countries::text[], :reasons::text[])
         AS e (subscriber_id, campaign_id, epoch, ip, user_agent, client, os, country, reason)
),
live AS (
    SELECT s.id,
           s.status = 'active'
               AND personal_tracking(:tracking_mode::text, s.tracking_consent,
                                     s.tracking_withdrawn_at) AS tracked
    FROM subscribers s
    WHERE s.id = ANY (:subscriber_ids::bigint[])
    ORDER BY s.id
    FOR SHARE
),
live_campaigns AS (
    SELECT c.id, c.first_sent_at
    FROM campaigns c
    WHERE c.id = ANY (:campaign_ids::bigint[])
    ORDER BY c.id
    FOR KEY SHARE
),
events AS (
    SELECT b.subscriber_id, b.campaign_id, b.at, b.ip, b.user_agent, b.client, b.os,
           b.country, coalesce(l.tracked, false) AS tracked, c.first_sent_at,
           d.subscriber_id IS NOT NULL AS delivered,
           COALESCE(b.reason,
                    CASE WHEN b.at >= d.sent_at
                          AND b.at < d.sent_at + make_interval(secs => :machine_window::float8)
                         THEN 'soon_after_send' END) AS machine_reason
    FROM batch b
    LEFT JOIN live l ON l.id = b.subscriber_id
    JOIN live_campaigns c ON c.id = b.campaign_id
    LEFT JOIN deliveries d ON d.campaign_id = b.campaign_id AND d.subscriber_id = b.subscriber_id
    WHERE b.subscriber_id IS NULL OR l.id IS NOT NULL
),
ranked AS (
    -- nth = 1: a person's first own open in this batch (machine opens are ranked apart).
    SELECT e.*,
           row_number() OVER (PARTITION BY e.campaign_id, e.subscriber_id,
                                           e.machine_reason IS NULL
                              ORDER BY e.at) AS nth
    FROM events e
),
inserted AS (
    INSERT INTO opens (subscriber_id, campaign_id, at, ip, user_agent, client, os, country,
                       machine_reason)
    SELECT subscriber_id, campaign_id, at, ip, user_agent, client, os, country, machine_reason
    FROM events
    WHERE tracked
    RETURNING 1
),
firsts AS (
    UPDATE deliveries d
    SET first_open_at = e.at
    FROM ranked e
    WHERE e.tracked AND e.delivered AND e.nth = 1 AND e.machine_reason IS NULL
      AND d.campaign_id = e.campaign_id AND d.subscriber_id = e.subscriber_id
      AND d.first_open_at IS NULL
    RETURNING d.campaign_id, d.subscriber_id
),
counted AS (
    SELECT e.*, (e.nth = 1 AND e.machine_reason IS NULL AND f.subscriber_id IS NOT NULL)
               AS is_unique
    FROM ranked e
    LEFT JOIN firsts f ON f.campaign_id = e.campaign_id AND f.subscriber_id = e.subscriber_id
),
counts AS (
    INSERT INTO campaign_counts AS cc (campaign_id, dimension, key, opens, machine_opens,
                                       unique_opens)
    SELECT k.campaign_id, k.dimension, k.key, count(*),
           count(*) FILTER (WHERE k.machine_reason IS NOT NULL),
           count(*) FILTER (WHERE k.is_unique)
    FROM (
        SELECT c.campaign_id, c.machine_reason, c.is_unique, dim.dimension, dim.key
        FROM counted c
        CROSS JOIN LATERAL (VALUES
            ('total', ''),
            ('hour', CASE WHEN c.first_sent_at IS NOT NULL THEN
                         greatest(0, floor(extract(epoch FROM c.at - c.first_sent_at) / 3600))::bigint::text
                     END),
            ('country', coalesce(c.country, 'unknown')),
            ('client', coalesce(c.client, 'unknown')),
            ('reason', c.machine_reason),
            ('tracking', CASE WHEN c.tracked THEN 'personal' ELSE 'anonymous' END)
        ) AS dim (dimension, key)
        WHERE dim.key IS NOT NULL
    ) k
    GROUP BY k.campaign_id, k.dimension, k.key
    ORDER BY k.campaign_id, k.dimension, k.key
    ON CONFLICT (campaign_id, dimension, key) DO UPDATE
    SET opens = cc.opens + excluded.opens,
        machine_opens = cc.machine_opens + excluded.machine_opens,
        unique_opens = cc.unique_opens + excluded.unique_opens
    RETURNING 1
)
SELECT (SELECT count(*) FROM events) AS live,
       (SELECT count(*) FROM inserted) AS personal,
       (SELECT count(*) FROM firsts) AS uniques,
       (SELECT count(*) FROM counts) AS count_rows;
