-- Bench-only reference queries (bench/reference_server.py); never in the service.

-- name: naive_insert_open
-- The one-awaited-INSERT-per-request design the pixel is compared with.
INSERT INTO opens (subscriber_id, campaign_id, at, ip, user_agent)
SELECT s.id, :campaign_id, now(), :ip, :user_agent
FROM subscribers s
WHERE s.id = :subscriber_id;
