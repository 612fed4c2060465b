-- Test sends of a campaign (issue 30): one copy to an address the operator types, through
-- the outbox so that it is DKIM-signed and goes the real way, but counted nowhere.
--
-- A test job names no subscriber (subscriber_id NULL: an erasure, the VERP return path and
-- the circuit breaker's mailbox refusals never concern it) and no campaign_id (that column
-- makes a job part of the campaign's send: its queued count, pause, cancel, failed counter):
-- the campaign it copies is `test_campaign_id`, the address `test_email`. The row, and the
-- address with it, is deleted once the email is sent or given up.
--
-- Locks: the new columns are nullable without a default (catalogue changes); the two
-- CHECKs read the outbox once under its ACCESS EXCLUSIVE lock, which is empty or short
-- between sends (a 100,000-job queue takes well under a second).
ALTER TABLE outbox ALTER COLUMN subscriber_id DROP NOT NULL;
-- No foreign key (as sql/130 dropped the outbox's): its trigger would run for every job
-- a campaign queues; a test job of a campaign that is gone is composed as nothing.
ALTER TABLE outbox ADD COLUMN test_campaign_id bigint;
ALTER TABLE outbox ADD COLUMN test_email text;
-- An address: no samples in the planner's statistics (migration 138).
ALTER TABLE outbox ALTER COLUMN test_email SET STATISTICS 0;

ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check CHECK (
    kind IN ('confirm', 'campaign', 'manage_link', 'address_confirm', 'welcome',
             'campaign_test'));
ALTER TABLE outbox ADD CONSTRAINT outbox_test_check CHECK (
    CASE WHEN kind = 'campaign_test'
         THEN subscriber_id IS NULL AND test_campaign_id IS NOT NULL AND test_email IS NOT NULL
         ELSE subscriber_id IS NOT NULL AND test_campaign_id IS NULL AND test_email IS NULL
    END);
