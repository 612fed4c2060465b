-- The subscriber's own page (service/manage*.py).
--
-- What reveals or changes personal data needs a fresh link mailed to the address on
-- file: one row per link issued. The link's token names the row; opening it is one
-- atomic UPDATE that sets `used_at` only while it is NULL and the link unexpired, so a
-- link works once whichever replica serves it. That request also sets the hash of a
-- random secret that the page's forms carry (never a URL): the page's session, valid
-- MANAGE_LINK_MAX_AGE after opening. Rows go with the subscriber (erasure): a link of an
-- erased subscriber names nothing, and ids are never reused.
CREATE TABLE manage_links (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber_id  bigint      NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    session_hash   bytea,                   -- sha256 of the page's secret, set when used
    session_until  timestamptz
);
CREATE INDEX manage_links_subscriber ON manage_links (subscriber_id);
CREATE INDEX manage_links_expires ON manage_links (expires_at);
CREATE UNIQUE INDEX manage_links_session ON manage_links (session_hash)
    WHERE session_hash IS NOT NULL;

-- A requested address change, until the new address confirms it (double opt-in again).
-- One per subscriber: a new request replaces the previous one. Until confirmed, the old
-- address stays the active one; on confirmation the row goes and the old address with it.
CREATE TABLE address_changes (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber_id  bigint      NOT NULL UNIQUE REFERENCES subscribers (id) ON DELETE CASCADE,
    new_email      text        NOT NULL,
    requested_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX address_changes_requested ON address_changes (requested_at);

-- The evidence of an address change (no address in it: the old one must be gone).
ALTER TABLE consent_events DROP CONSTRAINT consent_events_kind_check;
ALTER TABLE consent_events ADD CONSTRAINT consent_events_kind_check CHECK (kind IN (
    'signup', 'confirm', 'tracking_granted', 'tracking_withdrawn', 'address_changed'));

-- Two more kinds of email: the fresh manage link and the new address's confirmation.
-- Like the sign-up's confirmation, both go before campaign mail: a person waits for them.
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check CHECK (
    kind IN ('confirm', 'campaign', 'manage_link', 'address_confirm'));
DROP INDEX outbox_claim;
ALTER TABLE outbox DROP COLUMN priority;
ALTER TABLE outbox
    ADD COLUMN priority smallint NOT NULL
    GENERATED ALWAYS AS (CASE WHEN kind = 'campaign' THEN 1 ELSE 0 END) STORED;
CREATE INDEX outbox_claim ON outbox (priority, run_at, id);

-- The dashboard's subscriber list: keyset pages in address order, prefix search. The C
-- collation makes `LIKE 'prefix%'` and the ordering use this one index.
CREATE INDEX subscribers_email_order ON subscribers ((lower(email) COLLATE "C"), id);
