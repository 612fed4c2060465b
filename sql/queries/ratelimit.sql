-- Abuse limits kept in PostgreSQL so that they hold across replicas (service/ratelimit.py).

-- name: hit_window
-- Counts one hit in a fixed window and returns the new count.
INSERT INTO rate_limits AS r (scope, key, window_start, hits, last_at)
VALUES (:scope, :key, to_timestamp(:window_start), 1, now())
ON CONFLICT (scope, key, window_start) DO UPDATE SET hits = r.hits + 1, last_at = now()
RETURNING hits;

-- name: claim_email
-- Takes one confirmation email from an address's daily allowance: returns a row only
-- when fewer than :per_day were taken today and none within :min_interval seconds.
-- Atomic under concurrency (the conflicting row is locked by ON CONFLICT).
INSERT INTO rate_limits AS r (scope, key, window_start, hits, last_at)
VALUES ('address', :key, to_timestamp(:window_start), 1, now())
ON CONFLICT (scope, key, window_start) DO UPDATE SET hits = r.hits + 1, last_at = now()
    WHERE r.hits < :per_day AND r.last_at <= now() - make_interval(secs => :min_interval)
RETURNING hits;

-- name: purge_expired
-- Rows whose window ended more than a day ago.
DELETE FROM rate_limits WHERE window_start < now() - interval '2 days';
