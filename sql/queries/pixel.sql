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
           e.agent_id, e.client, e.client_id, e.os, e.os_id, e.country, e.country_id, e.reason,
           e.reason_id
    FROM unnest(:subscriber_ids::bigint[], :campaign_ids::bigint[], :ats::float8[],
                :ips::text[], :user_agents::text[], :user_agent_ids::int[], :clients::text[],
                :client_ids::smallint[], :oses::text[], :os_ids::smallint[],
                :countries::text[], :country_ids::smallint[], :reasons::text[],
                :reason_ids::smallint[])
         AS e (subscriber_id, campaign_id, epoch, ip, user_agent, agent_id, client, client_id,
               os, os_id, country, country_id, reason, reason_id)
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
    SELECT b.subscriber_id, b.campaign_id, b.at, b.ip, b.user_agent, b.agent_id, b.client, b.os,
           b.country, b.client_id, b.os_id, b.country_id, b.reason_id,
           coalesce(l.tracked, false) AS tracked, c.first_sent_at,
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
-- The row of an open is narrow (sql/161): its user agent a number into user_agents, its
-- client, os, country and machine reason numbers into open_labels, found by their unique
-- indexes. A string not found in this statement's snapshot is inserted; should another
-- replica have inserted it since, the no-op DO UPDATE still returns its id (DO NOTHING
-- would return none). A user agent's last_seen moves to this month once a month.
-- :user_agent_ids holds the ids the recorder already knows (it learns them from `agents`,
-- returned below, and forgets them when the month turns), NULL for the others: only those
-- are looked up here, which spares the pixel most of the look-ups' cost. The same for
-- the labels' ids (:client_ids and the rest; `labels` returned below; a label is never
-- deleted, so its id never changes); the machine reason this statement decides
-- (soon_after_send) is looked up here.
agent_strings AS (
    SELECT DISTINCT e.user_agent AS agent FROM events e
    WHERE e.tracked AND e.user_agent IS NOT NULL AND e.agent_id IS NULL
),
known_agents AS (
    SELECT ua.id, ua.agent, ua.last_seen FROM user_agents ua
    WHERE ua.agent IN (SELECT agent FROM agent_strings)
),
new_agents AS (
    INSERT INTO user_agents AS ua (agent, last_seen)
    SELECT s.agent, date_trunc('month', now() AT TIME ZONE 'UTC')::date
    FROM agent_strings s
    WHERE NOT EXISTS (SELECT FROM known_agents k WHERE k.agent = s.agent)
    ORDER BY s.agent
    ON CONFLICT (agent) DO UPDATE SET last_seen = excluded.last_seen
    RETURNING ua.id, ua.agent
),
seen_agents AS (
    UPDATE user_agents ua SET last_seen = date_trunc('month', now() AT TIME ZONE 'UTC')::date
    FROM known_agents k
    WHERE ua.id = k.id AND k.last_seen < date_trunc('month', now() AT TIME ZONE 'UTC')::date
    RETURNING 1
),
agents AS (
    SELECT id, agent FROM known_agents UNION ALL SELECT id, agent FROM new_agents
),
words AS (
    SELECT DISTINCT w.word FROM events e
    CROSS JOIN LATERAL (VALUES (e.client, e.client_id), (e.os, e.os_id),
                               (e.country, e.country_id),
                               (e.machine_reason, e.reason_id)) AS w (word, id)
    WHERE e.tracked AND w.word IS NOT NULL AND w.id IS NULL
),
known_labels AS (
    SELECT l.id, l.label FROM open_labels l WHERE l.label IN (SELECT word FROM words)
),
new_labels AS (
    INSERT INTO open_labels AS l (label)
    SELECT w.word FROM words w
    WHERE NOT EXISTS (SELECT FROM known_labels k WHERE k.label = w.word)
    ORDER BY w.word
    ON CONFLICT (label) DO UPDATE SET label = excluded.label
    RETURNING l.id, l.label
),
labels AS (
    SELECT id, label FROM known_labels UNION ALL SELECT id, label FROM new_labels
),
inserted AS (
    INSERT INTO opens (subscriber_id, campaign_id, at, addr, user_agent_id, client_id, os_id,
                       country_id, reason_id)
    SELECT e.subscriber_id, e.campaign_id, e.at, e.ip::inet,
           coalesce(e.agent_id, (SELECT a.id FROM agents a WHERE a.agent = e.user_agent)),
           coalesce(e.client_id, (SELECT l.id FROM labels l WHERE l.label = e.client)),
           coalesce(e.os_id, (SELECT l.id FROM labels l WHERE l.label = e.os)),
           coalesce(e.country_id, (SELECT l.id FROM labels l WHERE l.label = e.country)),
           coalesce(e.reason_id, (SELECT l.id FROM labels l WHERE l.label = e.machine_reason))
    FROM events e
    WHERE e.tracked
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
       (SELECT count(*) FROM counts) AS count_rows,
       ARRAY(SELECT agent FROM agents ORDER BY id) AS agents,
       ARRAY(SELECT id FROM agents ORDER BY id) AS agent_ids,
       ARRAY(SELECT label FROM labels ORDER BY id) AS labels,
       ARRAY(SELECT id FROM labels ORDER BY id) AS label_ids;
