-- Scheduled sends (issue 28): the time a campaign's send is to start, NULL when none is
-- waiting. The worker that queues the send clears it in the same transaction, so each
-- schedule is queued once, by one replica, also across restarts
-- (service/campaigns/schedule.py). The partial index holds only the waiting schedules.
-- A nullable column without a default is a catalogue change, and campaigns has one row
-- per campaign: both statements take milliseconds at any list size.
ALTER TABLE campaigns ADD COLUMN scheduled_at timestamptz;
CREATE INDEX campaigns_scheduled_at ON campaigns (scheduled_at) WHERE scheduled_at IS NOT NULL;
