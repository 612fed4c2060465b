-- Events for the shop's other systems: queueing (service/events/outbox.py) and delivery
-- (service/outbox/events.py).

-- name: sync_endpoints
-- The receivers this process is configured with replace those in the table (every
-- process of a deployment shares its EVENTS_* settings). :types holds one entry per URL,
-- '' for every type, else the types separated by spaces.
WITH wanted AS (
    SELECT u.url, CASE WHEN u.types = '' THEN NULL ELSE string_to_array(u.types, ' ') END AS types
    FROM unnest(:urls::text[], :types::text[]) AS u (url, types)
),
gone AS (
    DELETE FROM event_endpoints e WHERE e.url NOT IN (SELECT url FROM wanted)
),
orphans AS (  -- a receiver taken out of the settings gets nothing more: no address waits
    DELETE FROM event_outbox o
    WHERE o.id IN (SELECT id FROM event_outbox WHERE endpoint NOT IN (SELECT url FROM wanted)
                   FOR UPDATE SKIP LOCKED)
)
INSERT INTO event_endpoints (url, types)
SELECT url, types FROM wanted
ON CONFLICT (url) DO UPDATE SET types = excluded.types
WHERE event_endpoints.types IS DISTINCT FROM excluded.types;

-- name: person
-- What the events say about a subscriber (service/events/outbox.py, person_data), locked
-- for the rest of the transaction: the events of one person are queued (and numbered) in
-- the order their transactions commit. No row when no receiver is configured: then
-- nothing is locked or read.
SELECT s.id, s.email, s.name, s.status, s.tracking_consent, s.tracking_withdrawn_at, s.lang,
       coalesce((SELECT array_agg(t.slug ORDER BY t.slug)
                 FROM subscriber_topics st JOIN topics t ON t.id = st.topic_id
                 WHERE st.subscriber_id = s.id), '{}') AS topics
FROM subscribers s
WHERE s.id = :subscriber_id AND EXISTS (SELECT 1 FROM event_endpoints)
FOR NO KEY UPDATE OF s;

-- name: queue
-- Queues one event for every receiver that wants its type. A `subscriber.updated` in a
-- transaction that already queued the person's confirmed or updated event refreshes that
-- event's data instead (a confirmation with the form's choices is one event, not three).
WITH targets AS (
    SELECT url FROM event_endpoints WHERE types IS NULL OR :type = ANY (types)
),
refreshed AS (
    UPDATE event_outbox e SET data = :data::jsonb
    WHERE :type = 'subscriber.updated'
      AND e.subscriber_id = :subscriber_id
      AND e.tx = pg_current_xact_id()
      AND e.type IN ('subscriber.confirmed', 'subscriber.updated')
    RETURNING e.endpoint
)
INSERT INTO event_outbox (endpoint, type, subscriber_id, address, webhook_id, data, run_at)
SELECT t.url, :type, :subscriber_id, lower(:address), :webhook_id, :data::jsonb,
       -- Not due before the person's earlier event (waiting for its retry): the claim's
       -- scan of due events meets few that must wait behind another.
       greatest(now(), (SELECT max(p.run_at) FROM event_outbox p
                        WHERE p.endpoint = t.url AND p.subscriber_id = :subscriber_id),
                       (SELECT max(p.run_at) FROM event_outbox p
                        WHERE p.endpoint = t.url AND p.address = lower(:address)))
FROM targets t
CROSS JOIN LATERAL (SELECT pg_notify('newsletter_events', '')) AS wake  -- one, at commit
WHERE t.url NOT IN (SELECT endpoint FROM refreshed);

-- name: forget_person
-- At erasure, before its event: the person's queued events that are not in flight (those
-- carry the name; an in-flight one finishes, and is delivered before the erasure).
DELETE FROM event_outbox
WHERE id IN (
    SELECT id FROM event_outbox
    WHERE subscriber_id = :subscriber_id AND type <> 'subscriber.erased'
    FOR UPDATE SKIP LOCKED
);

-- name: export_events
-- The person's queued events (access request): what will still be sent, and to which
-- host (not the whole URL: its path may hold the receiver's token).
SELECT substring(endpoint FROM '^[a-z]+://(?:[^@/]*@)?([^/:?#]+)') AS receiver, type,
       occurred_at, attempts, run_at
FROM event_outbox WHERE subscriber_id = :subscriber_id ORDER BY id;

-- name: claim
-- Up to :limit due events, each the oldest queued for its person and receiver (by
-- subscriber id and by address): a later event waits while an earlier one is in flight
-- in another lane or replica (a locked row is still seen here), or waits for its retry.
-- Ids follow the commit order of one person's transactions (the `person` query locks the
-- subscriber), so this is the order of the changes.
SELECT e.id, e.endpoint, e.type, e.webhook_id, e.occurred_at, e.data::text AS data,
       e.attempts, extract(epoch FROM now() - e.occurred_at)::float8 AS age
FROM event_outbox e
WHERE e.run_at <= now()
  -- Two tests, not one with OR: each is one probe of its index (with OR the planner walks
  -- every earlier id).
  AND NOT EXISTS (
      SELECT 1 FROM event_outbox p
      WHERE p.endpoint = e.endpoint AND p.subscriber_id = e.subscriber_id AND p.id < e.id
  )
  AND NOT EXISTS (
      SELECT 1 FROM event_outbox p
      WHERE p.endpoint = e.endpoint AND p.address = e.address AND p.id < e.id
  )
ORDER BY e.run_at, e.id
LIMIT :limit
FOR UPDATE OF e SKIP LOCKED;

-- name: delivered
DELETE FROM event_outbox WHERE id = ANY (:ids::bigint[]);

-- name: retry_later
UPDATE event_outbox o
SET attempts = o.attempts + 1,
    run_at = now() + make_interval(secs => j.delay),
    last_error = j.error
FROM unnest(:ids::bigint[], :delays::float8[], :errors::text[]) AS j (id, delay, error)
WHERE o.id = j.id;

-- name: drop_superseded
-- Of :ids (deliveries that just failed), those the person's erasure follows: they were in
-- flight when the erasure deleted the person's other events, and carry the name.
DELETE FROM event_outbox o
WHERE o.id = ANY (:ids::bigint[])
  AND o.type <> 'subscriber.erased'
  AND EXISTS (
      SELECT 1 FROM event_outbox e
      WHERE e.endpoint = o.endpoint AND e.subscriber_id = o.subscriber_id
        AND e.type = 'subscriber.erased' AND e.id > o.id
  )
RETURNING o.id, o.endpoint;

-- name: hold_followers
-- After :ids were put off for a retry: the later events of their people (for the same
-- receiver) are not due before them either (see `queue`).
UPDATE event_outbox f SET run_at = h.run_at
FROM (
    SELECT later.id, o.run_at
    FROM event_outbox o
    JOIN event_outbox later ON later.endpoint = o.endpoint
        AND later.subscriber_id = o.subscriber_id AND later.id > o.id
    WHERE o.id = ANY (:ids::bigint[])
    UNION ALL
    SELECT later.id, o.run_at
    FROM event_outbox o
    JOIN event_outbox later ON later.endpoint = o.endpoint
        AND later.address = o.address AND later.id > o.id
    WHERE o.id = ANY (:ids::bigint[])
) h
WHERE f.id = h.id AND f.run_at < h.run_at;

-- name: drop_expired
-- Events older than EVENTS_MAX_AGE, not those in flight: no address lingers for a
-- receiver that is gone or never answers. (Those of a receiver taken out of the
-- settings go at the next start: sync_endpoints.)
DELETE FROM event_outbox
WHERE id IN (
    SELECT id FROM event_outbox
    WHERE occurred_at < now() - make_interval(secs => :max_age)
    FOR UPDATE SKIP LOCKED
)
RETURNING endpoint;

-- name: next_due_in
SELECT extract(epoch FROM min(run_at) - now())::float8 FROM event_outbox;
