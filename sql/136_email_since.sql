-- Return-path tokens bind the address the email went to (service/bounces/actions.py):
-- a token carries its time of sending, and a report acts only if the subscriber's address
-- has not changed since. `email_since` is when the address last changed (NULL: never),
-- set by the database on every change of `email`, whichever code makes it.
ALTER TABLE subscribers ADD COLUMN email_since timestamptz;

CREATE FUNCTION subscribers_email_since() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.email_since := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER subscribers_email_since
    BEFORE UPDATE OF email ON subscribers
    FOR EACH ROW WHEN (OLD.email IS DISTINCT FROM NEW.email)
    EXECUTE FUNCTION subscribers_email_since();

-- Address changes made before this migration are known by their consent event.
UPDATE subscribers s SET email_since = e.at
FROM (SELECT subscriber_id, max(at) AS at FROM consent_events
      WHERE kind = 'address_changed' GROUP BY subscriber_id) e
WHERE e.subscriber_id = s.id;
