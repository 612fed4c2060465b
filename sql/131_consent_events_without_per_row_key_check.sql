-- Consent evidence without a foreign-key check per inserted row, as migration 130 did for
-- deliveries and outbox jobs, for the same reason: importing a list writes one or two
-- consent events per line, and the key's check (a query per row against subscribers)
-- was 17 % of the import statement (EXPLAIN ANALYZE, 200,000 lines: 1.57 s of 9.2 s).
--
-- What the key guaranteed still holds:
-- - No orphan is ever inserted. Every statement that records evidence does it in the
--   transaction that wrote or locked the subscriber row first, so an erasure waits for
--   its commit: a sign-up's upsert (sql/queries/signup.sql), a confirmation's UPDATE
--   (activate) or FOR UPDATE (lock_choices), the subscriber page's FOR UPDATE
--   (manage.sql lock_subscriber, lock_change) and UPDATEs, a withdrawal's FOR UPDATE
--   (tracking.sql lock_subscriber), an import's INSERT of the subscriber.
-- - Deleting a subscriber still deletes their evidence in the same transaction, through
--   the row trigger below, using the consent_events_subscriber index.
--
-- The erasure test checks every table for what is left of an erased subscriber.
ALTER TABLE consent_events DROP CONSTRAINT consent_events_subscriber_id_fkey;

CREATE FUNCTION evidence_cascade_subscriber() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM consent_events WHERE subscriber_id = OLD.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER evidence_cascade AFTER DELETE ON subscribers
    FOR EACH ROW EXECUTE FUNCTION evidence_cascade_subscriber();
