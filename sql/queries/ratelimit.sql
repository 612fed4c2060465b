-- Abuse limits kept in PostgreSQL so that they hold across replicas (service/web/ratelimit.py).

-- name: key_of_day
-- The day's random HMAC key, created by the first replica that asks. NULL when another
-- replica created it concurrently (this statement's snapshot cannot see it): ask again.
WITH created AS (
    INSERT INTO rate_limit_keys (day, key) VALUES (:day, :candidate)
    ON CONFLICT (day) DO NOTHING
    RETURNING key
)
SELECT key FROM created
UNION ALL
SELECT key FROM rate_limit_keys WHERE day = :day
LIMIT 1;

-- name: day_keys
-- The keys still held (today's, and yesterday's until the next retention pass).
SELECT key FROM rate_limit_keys ORDER BY day;

-- name: hit_window
-- Counts one hit in a fixed window and returns the new count.
INSERT INTO rate_limits AS r (scope, key, window_start, hits, last_at)
VALUES (:scope, :key, to_timestamp(:window_start), 1, now())
ON CONFLICT (scope, key, window_start) DO UPDATE SET hits = r.hits + 1, last_at = now()
RETURNING hits;

-- name: window_hits
-- The hits counted so far in a fixed window (NULL: none).
SELECT hits FROM rate_limits
WHERE scope = :scope AND key = :key AND window_start = to_timestamp(:window_start);

-- name: purge_expired
-- Every window of a past UTC day is over: its rows and its key go. Returns the rows.
WITH keys AS (
    DELETE FROM rate_limit_keys WHERE day < (now() AT TIME ZONE 'UTC')::date
),
counters AS (
    DELETE FROM rate_limits
    WHERE window_start < date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
    RETURNING 1
)
SELECT count(*) FROM counters;
