-- The service's schema.
--
-- Personal data lives only in tables that reference subscribers(id) ON DELETE CASCADE,
-- so that deleting the subscriber row (unsubscribe, erasure request, purge of an
-- unconfirmed sign-up) deletes everything about the person in one statement.
-- The tables marked "anonymous" hold counts only and survive erasure.

-- One row per address; 'pending' until the person confirms.
CREATE TABLE subscribers (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email             text        NOT NULL,               -- normalised by email-validator
    name              text,
    status            text        NOT NULL DEFAULT 'pending'
                                  CHECK (status IN ('pending', 'active')),
    tracking_consent  boolean     NOT NULL DEFAULT false, -- per TRACKING_MODE
    created_at        timestamptz NOT NULL DEFAULT now(),
    signup_at         timestamptz NOT NULL DEFAULT now(),  -- latest sign-up request
    confirm_sent_at   timestamptz,                         -- latest confirmation mail handed to SMTP
    confirmed_at      timestamptz
);
CREATE UNIQUE INDEX subscribers_email_key ON subscribers (lower(email));
CREATE INDEX subscribers_active ON subscribers (id) WHERE status = 'active';
CREATE INDEX subscribers_pending_signup ON subscribers (signup_at) WHERE status = 'pending';

-- Evidence of consent (GDPR Art. 7(1)): append-only, one row per event.
CREATE TABLE consent_events (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber_id         bigint      NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    kind                  text        NOT NULL CHECK (kind IN (
                              'signup', 'confirm', 'tracking_granted', 'tracking_withdrawn')),
    at                    timestamptz NOT NULL DEFAULT now(),
    ip                    text,        -- reduced per IP_MODE; NULL in mode 'none'
    user_agent            text,
    source                text,        -- form source field or Referer
    consent_text_version  text,
    method                text         -- for 'confirm': 'auto' (script) or 'button'
);
CREATE INDEX consent_events_subscriber ON consent_events (subscriber_id);

CREATE TABLE campaigns (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text        NOT NULL,
    subject        text        NOT NULL,
    html           text        NOT NULL,
    text           text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    first_sent_at  timestamptz,                 -- hour buckets of the stats count from here
    recipients     bigint      NOT NULL DEFAULT 0,  -- anonymous counters, survive erasure
    sent           bigint      NOT NULL DEFAULT 0,
    failed         bigint      NOT NULL DEFAULT 0
);

-- Which subscriber was (to be) mailed which campaign: makes a second send mail nobody
-- twice, and gives the pixel the send time (machine opens within seconds of delivery).
CREATE TABLE deliveries (
    campaign_id    bigint      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    subscriber_id  bigint      NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    queued_at      timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz,
    first_open_at  timestamptz,               -- only for subscribers who allow tracking
    PRIMARY KEY (campaign_id, subscriber_id)
);
CREATE INDEX deliveries_subscriber ON deliveries (subscriber_id);

-- Transactional outbox: a row is an email to send; deleted once sent.
CREATE TABLE outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind           text        NOT NULL CHECK (kind IN ('confirm', 'campaign')),
    subscriber_id  bigint      NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    campaign_id    bigint      REFERENCES campaigns (id) ON DELETE CASCADE,
    attempts       integer     NOT NULL DEFAULT 0,
    run_at         timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_error     text,                       -- SMTP code and class only, never an address
    CHECK ((kind = 'campaign') = (campaign_id IS NOT NULL))
);
CREATE INDEX outbox_due ON outbox (run_at, id);
CREATE INDEX outbox_subscriber ON outbox (subscriber_id);

-- Open events (only for subscribers whose opens may be recorded per TRACKING_MODE).
CREATE TABLE opens (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber_id   bigint      NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    campaign_id     bigint      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    at              timestamptz NOT NULL,
    ip              text,                      -- reduced per IP_MODE
    user_agent      text,
    client          text,
    os              text,
    country         text,
    machine_reason  text                       -- NULL: a person opened it
);
CREATE INDEX opens_subscriber ON opens (subscriber_id);
CREATE INDEX opens_at ON opens (at);

-- Anonymous campaign counters, one row per (campaign, dimension, key):
-- dimension 'total' (key ''), 'hour' (hours since first_sent_at), 'country', 'client',
-- 'reason' (machine-open reason).
CREATE TABLE campaign_counts (
    campaign_id    bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    dimension      text   NOT NULL,
    key            text   NOT NULL,
    opens          bigint NOT NULL DEFAULT 0,
    machine_opens  bigint NOT NULL DEFAULT 0,
    unique_opens   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, dimension, key)
);

-- Anonymous list counters per UTC day.
CREATE TABLE list_daily (
    day            date    PRIMARY KEY,
    signups        integer NOT NULL DEFAULT 0,
    confirmations  integer NOT NULL DEFAULT 0,
    unsubscribes   integer NOT NULL DEFAULT 0
);

-- Abuse limits shared by every replica. The key is an HMAC of the address or IP,
-- never the value itself; rows keyed by an address are deleted with the subscriber.
CREATE TABLE rate_limits (
    scope         text        NOT NULL,        -- 'ip' or 'address'
    key           bytea       NOT NULL,
    window_start  timestamptz NOT NULL,
    hits          integer     NOT NULL DEFAULT 0,
    last_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key, window_start)
);
CREATE INDEX rate_limits_window ON rate_limits (window_start);
