-- name: campaign
-- The campaign's own anonymous counters.
SELECT id, name, created_at, first_sent_at, recipients, sent, failed, paused_at, paused_reason
FROM campaigns
WHERE id = :campaign_id;

-- name: refusals
-- Relay refusals at send time by category and code (issue 24), anonymous.
SELECT category, code, count FROM refusal_counts
WHERE campaign_id = :campaign_id
ORDER BY count DESC, category, code;

-- name: counts
-- Every aggregate row of a campaign; they survive the erasure of the openers.
SELECT dimension, key, opens, machine_opens, unique_opens
FROM campaign_counts
WHERE campaign_id = :campaign_id
ORDER BY dimension, key;
