-- Sending safely to a relay in a bad mood (issue 24): a campaign the circuit breaker
-- paused, refusals held until they are known not to be a burst, refusals counted by
-- category, and the deployment's send-rate bucket.
--
-- A paused campaign's jobs wait with run_at = 'infinity': no claim of any process
-- reaches them (the claim walks its index only up to now()), and resuming sets run_at
-- back. `paused_reason` is a refusal category (service/bounces/parse.py), never text.
ALTER TABLE campaigns
    ADD COLUMN paused_at timestamptz,
    ADD COLUMN paused_reason text;

-- A relay's refusal of a recipient's mailbox at RCPT, not applied yet: the worker erases
-- the person only once its recent sends show the refusals are not a burst (a relay
-- refusing everyone), and requeues the job when they are. Personal data (it names a
-- subscriber): deleted with the subscriber.
CREATE TABLE held_refusals (
    subscriber_id  bigint      NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    campaign_id    bigint      NOT NULL DEFAULT 0,  -- 0: a confirmation or other one-off email
    kind           text        NOT NULL,
    reason         text        NOT NULL,            -- the status code, e.g. 5.1.1
    holder         text        NOT NULL,            -- the worker process that holds it
    held_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber_id, campaign_id)
);
CREATE INDEX held_refusals_campaign ON held_refusals (campaign_id);

-- Anonymous: refusals at send time per campaign (NULL: one-off emails), category and
-- code, for the operator (campaign stats).
CREATE TABLE refusal_counts (
    campaign_id  bigint REFERENCES campaigns (id) ON DELETE CASCADE,
    category     text   NOT NULL,
    code         text   NOT NULL,  -- "550 5.1.8", or the basic code alone
    count        bigint NOT NULL DEFAULT 0,
    UNIQUE NULLS NOT DISTINCT (campaign_id, category, code)
);

-- SMTP_MAX_RATE, SMTP_MAX_PER_HOUR and SMTP_MAX_PER_DAY for every process together: one
-- token bucket row, from which each lane reserves its batch (service/send_rate.py).
CREATE TABLE send_rate (
    id           boolean     PRIMARY KEY DEFAULT true CHECK (id),
    tokens       float8      NOT NULL DEFAULT 0,
    refilled_at  timestamptz NOT NULL DEFAULT now(),
    hour_start   timestamptz NOT NULL DEFAULT '-infinity',
    hour_sent    bigint      NOT NULL DEFAULT 0,
    day_start    timestamptz NOT NULL DEFAULT '-infinity',
    day_sent     bigint      NOT NULL DEFAULT 0
);
INSERT INTO send_rate DEFAULT VALUES;
