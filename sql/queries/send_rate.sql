-- SMTP_MAX_RATE, SMTP_MAX_PER_HOUR and SMTP_MAX_PER_DAY, for every process together
-- (service/outbox/send_rate.py). Each statement is its own short transaction: the bucket row
-- is locked only while it is read and written, never through a send.

-- name: reserve
-- Up to :want emails now: tokens refill at :rate per second (NULL: no rate cap) up to
-- one second's worth (at least 1), and the clock hour's and UTC day's counts stay within
-- :per_hour and :per_day (NULL: no cap). Nothing is granted while fewer than :at_least
-- tokens are there (a lane waits for a useful batch instead of asking for every token);
-- `wait_s` is then how long until something can be granted.
WITH clock AS (
    SELECT clock_timestamp() AS t
), current AS (
    SELECT k.t,
           CASE WHEN :rate::float8 IS NULL THEN :want::float8
                ELSE least(greatest(:rate::float8, 1.0),
                           r.tokens + :rate::float8 * extract(epoch FROM k.t - r.refilled_at))
           END AS available,
           CASE WHEN r.hour_start = date_trunc('hour', k.t, 'UTC') THEN r.hour_sent ELSE 0
           END AS hour_used,
           CASE WHEN r.day_start = date_trunc('day', k.t, 'UTC') THEN r.day_sent ELSE 0
           END AS day_used
    FROM send_rate r, clock k
    WHERE r.id
    FOR UPDATE OF r
), granting AS (
    SELECT c.*,
           CASE WHEN c.available < least(:at_least::float8, :want::float8) THEN 0
                ELSE greatest(0, least(:want::bigint, floor(c.available)::bigint,
                                       coalesce(:per_hour::bigint - c.hour_used, :want::bigint),
                                       coalesce(:per_day::bigint - c.day_used, :want::bigint)))
           END::int AS granted
    FROM current c
)
UPDATE send_rate r
SET tokens = g.available - g.granted,
    refilled_at = g.t,
    hour_start = date_trunc('hour', g.t, 'UTC'),
    hour_sent = g.hour_used + g.granted,
    day_start = date_trunc('day', g.t, 'UTC'),
    day_sent = g.day_used + g.granted
FROM granting g
WHERE r.id
RETURNING g.granted,
    CASE
        WHEN g.granted > 0 THEN 0.0
        WHEN :per_day::bigint IS NOT NULL AND g.day_used >= :per_day::bigint THEN
            extract(epoch FROM date_trunc('day', g.t, 'UTC') + interval '1 day' - g.t)::float8
        WHEN :per_hour::bigint IS NOT NULL AND g.hour_used >= :per_hour::bigint THEN
            extract(epoch FROM date_trunc('hour', g.t, 'UTC') + interval '1 hour' - g.t)::float8
        ELSE ((least(:at_least::float8, :want::float8) - g.available) / :rate::float8)::float8
    END AS wait_s;

-- name: give_back
-- Tokens reserved for emails that were not sent after all (a short claim, a relay that
-- went away): back into the bucket and off the hour's and day's counts.
UPDATE send_rate
SET tokens = CASE WHEN :rate::float8 IS NULL THEN tokens
                  ELSE least(tokens + :n, greatest(:rate::float8, 1.0)) END,
    hour_sent = greatest(hour_sent - :n, 0),
    day_sent = greatest(day_sent - :n, 0)
WHERE id;
