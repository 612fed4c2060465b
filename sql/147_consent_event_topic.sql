-- The topic a consent event is about (issue 28), in a column of its own: `method` says
-- how the person acted (button, auto, import), and migration 142 had put the topic's
-- slug there for `topic_joined` and `topic_left`.
--
-- The slug as text, not a key to `topics`: evidence has to outlive the topic (a deleted
-- topic's joins and leaves stay provable and readable in the access export), and a slug
-- never changes (service/admin/topics_api.py), so it names the same topic for good,
-- without a join. A nullable column without a default is a catalogue change; the UPDATE
-- touches the topic events only.
ALTER TABLE consent_events ADD COLUMN topic text;

UPDATE consent_events SET topic = method, method = NULL
WHERE kind IN ('topic_joined', 'topic_left') AND topic IS NULL;

-- Every caller of record_consent passes the topic (NULL for the other kinds): a ROW()
-- with the old eight fields no longer casts, so no caller can leave it out unnoticed.
ALTER TYPE consent_evidence ADD ATTRIBUTE topic text;

CREATE OR REPLACE FUNCTION record_consent(events consent_evidence[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    written bigint;
BEGIN
    INSERT INTO consent_events (subscriber_id, kind, at, ip, user_agent, source,
                                consent_text_version, method, topic)
    SELECT e.subscriber_id, e.kind, coalesce(e.at, now()), e.ip, e.user_agent, e.source,
           e.consent_text_version, e.method, e.topic
    FROM unnest(events) AS e;
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END
$$;
