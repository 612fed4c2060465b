-- Events for the shop's other systems (docs/guides/events.md): a transactional outbox of
-- its own, beside the email outbox. Not rows of `outbox`: an email job is deleted with its
-- subscriber (sql/130), while a `subscriber.erased` event must outlive the row it tells
-- about, and an event is an HTTP request, not an email (no SMTP lane, rate cap or breaker).

-- The receivers configured (EVENTS_URL, EVENTS_TYPES), written by every process at start
-- (service/events/outbox.py, sync_endpoints), so that the statement that changes a person
-- queues their events with nothing but its connection. No secret is stored: each process
-- signs with its own EVENTS_SECRET. `types` NULL: every event type.
CREATE TABLE event_endpoints (
    url    text PRIMARY KEY,
    types  text[]
);

-- One row per event and receiver, deleted once delivered, or dropped after EVENTS_MAX_AGE.
-- Personal data (the address, the name in `data`) lives here only until then; an erasure
-- deletes the person's queued events that are not in flight (service/privacy/erasure.py).
CREATE TABLE event_outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint       text        NOT NULL,
    type           text        NOT NULL CHECK (type IN (
                       'subscriber.confirmed', 'subscriber.updated', 'subscriber.erased')),
    -- The person, twice: the id orders one subscriber's events across an address change,
    -- the lower-cased address orders an erasure before a new sign-up of the same address
    -- (a new id). No foreign key: the erased event outlives the subscriber.
    subscriber_id  bigint      NOT NULL,
    address        text        NOT NULL,
    webhook_id     text        NOT NULL,  -- the same on every retry (Standard Webhooks)
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    data           jsonb       NOT NULL,
    -- The queueing transaction: a second change of a person in one transaction refreshes
    -- the event it already queued instead of queueing another.
    tx             xid8        NOT NULL DEFAULT pg_current_xact_id(),
    attempts       integer     NOT NULL DEFAULT 0,
    run_at         timestamptz NOT NULL DEFAULT now(),
    last_error     text
);
CREATE INDEX event_outbox_due ON event_outbox (run_at, id);
-- The person first: the claim's ordering probes give both columns, an erasure and an
-- access request only the subscriber.
CREATE INDEX event_outbox_subscriber ON event_outbox (subscriber_id, endpoint, id);
CREATE INDEX event_outbox_address ON event_outbox (address, endpoint, id);
CREATE INDEX event_outbox_occurred ON event_outbox (occurred_at);
