-- Open events keep their cascade on delete but lose the per-row foreign-key check.
--
-- A foreign key checks every inserted row with its own query against the referenced
-- table: two per open event, a fifth of the pixel recorder's statement time, and (with
-- the PostgreSQL CPU it takes from the service on the same machine) about a fifth of
-- the pixel's throughput in `make bench`. What the keys guaranteed still holds:
--
-- - No orphan is ever inserted. `opens` is written only by `record_opens`
--   (sql/queries/pixel.sql), which joins subscribers FOR SHARE and campaigns FOR KEY
--   SHARE: an erasure that commits first makes the join drop the event, one that starts
--   later waits for the batch to commit.
-- - Deleting a subscriber or a campaign still deletes its events, in the same
--   transaction, through the row triggers below: the same work ON DELETE CASCADE does
--   (it is a row trigger too). A subscriber's events are found through the
--   opens_subscriber index; campaigns are never deleted by the service, so, as with
--   the foreign key before, there is no index for that case.
--
-- The erasure test checks every table for what is left of an erased subscriber.
ALTER TABLE opens DROP CONSTRAINT opens_subscriber_id_fkey;
ALTER TABLE opens DROP CONSTRAINT opens_campaign_id_fkey;

CREATE FUNCTION opens_cascade_subscriber() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM opens WHERE subscriber_id = OLD.id;
    RETURN NULL;
END
$$;

CREATE FUNCTION opens_cascade_campaign() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM opens WHERE campaign_id = OLD.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER opens_cascade AFTER DELETE ON subscribers
    FOR EACH ROW EXECUTE FUNCTION opens_cascade_subscriber();

CREATE TRIGGER opens_cascade AFTER DELETE ON campaigns
    FOR EACH ROW EXECUTE FUNCTION opens_cascade_campaign();
