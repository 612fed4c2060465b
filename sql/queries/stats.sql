-- name: campaign
-- The campaign's own anonymous counters.
SELECT id, name, created_at, first_sent_at, recipients, sent, failed
FROM campaigns
WHERE id = :campaign_id;

-- name: counts
-- Every aggregate row of a campaign; they survive the erasure of the openers.
SELECT dimension, key, opens, machine_opens, unique_opens
FROM campaign_counts
WHERE campaign_id = :campaign_id
ORDER BY dimension, key;
