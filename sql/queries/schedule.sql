-- Scheduled sends (service/campaigns/schedule.py): setting, cancelling and claiming
-- the time a campaign's send starts (campaigns.scheduled_at, sql/146).

-- name: set_schedule
-- Only before the campaign's first send started: once it did, its send is queued or sent.
-- Never a topic's welcome message (sql/142), which is sent to each person as they join.
UPDATE campaigns SET scheduled_at = :at
WHERE id = :id AND first_sent_at IS NULL AND NOT welcome
RETURNING scheduled_at;

-- name: send_state
SELECT first_sent_at IS NOT NULL AS started, welcome FROM campaigns WHERE id = :id;

-- name: clear_schedule
-- Cancels a waiting schedule; no row when none waits (never set, cancelled, or claimed:
-- a claim holds the row until its queueing commits, so this waits for it and then finds
-- the schedule gone).
UPDATE campaigns SET scheduled_at = NULL
WHERE id = :id AND scheduled_at IS NOT NULL
RETURNING id;

-- name: due_schedules
-- Candidates only: each is claimed under the campaign's send lock (claim_schedule).
SELECT id FROM campaigns
WHERE scheduled_at <= now() AND NOT welcome
ORDER BY scheduled_at, id
LIMIT :limit;

-- name: claim_schedule
-- Run under lock_campaign_send (sql/queries/campaigns.sql): a replica that waited for
-- another's claim of the same campaign finds scheduled_at cleared and claims nothing.
UPDATE campaigns SET scheduled_at = NULL
WHERE id = :id AND scheduled_at <= now()
RETURNING id;

-- name: next_schedule_in
-- Seconds until the next waiting schedule is due (negative when overdue), NULL when none.
SELECT extract(epoch FROM min(scheduled_at) - now())::float8
FROM campaigns
WHERE scheduled_at IS NOT NULL;
