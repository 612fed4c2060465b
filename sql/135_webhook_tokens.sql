-- Webhook replays (service/bounces/webhooks.py): Mailgun's signature covers only its
-- timestamp and a random token, not the event, so a signature seen once could be sent
-- again with any event. Events older than the freshness window (5 minutes) are refused;
-- within it, each token is taken once: its row, purged once older than the window.
-- No personal data.
CREATE TABLE webhook_tokens (
    provider  text        NOT NULL,
    token     text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, token)
);
CREATE INDEX webhook_tokens_at ON webhook_tokens (at);
