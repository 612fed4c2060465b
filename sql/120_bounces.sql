-- Bounces and complaints (service/bounces/).
--
-- bounce_counts is anonymous: one counter per campaign (NULL: confirmation emails, or a
-- bounce no campaign could be found for), event, intake and reason, kept after the
-- person is erased. `reason` is a status code (`5.1.1`) or a provider's fixed category,
-- never text from the bounce (which can quote the address).
CREATE TABLE bounce_counts (
    campaign_id  bigint REFERENCES campaigns (id) ON DELETE CASCADE,
    event        text   NOT NULL CHECK (event IN ('hard', 'soft', 'complaint')),
    source       text   NOT NULL,   -- 'smtp' (refused at send), 'dsn', 'arf', 'ses', ...
    reason       text   NOT NULL,
    count        bigint NOT NULL DEFAULT 0,
    UNIQUE NULLS NOT DISTINCT (campaign_id, event, source, reason)
);

-- Soft bounces of a subscriber still on the list: personal data (deleted with the
-- subscriber), kept until BOUNCE_SOFT_WINDOW has passed. One row per email, so a
-- repeated report of the same bounce (a webhook retried, a DSN sent twice) counts once.
CREATE TABLE soft_bounces (
    subscriber_id  bigint      NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    campaign_id    bigint      NOT NULL DEFAULT 0,   -- 0: a confirmation email
    at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber_id, campaign_id)
);
CREATE INDEX soft_bounces_at ON soft_bounces (at);
