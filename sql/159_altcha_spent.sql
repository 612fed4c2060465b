-- The bot check's spent payloads (issue 29, service/signup/botcheck.py): a solved ALTCHA
-- challenge is good for one sign-up. Each row is the HMAC signature of one challenge the
-- service issued (no personal data: it names nothing but the challenge) and when that
-- challenge expires; after that, verification refuses the payload anyway and the row
-- can go. A table, not memory, so that every replica refuses a payload any of them took.
CREATE TABLE altcha_spent (
    signature text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

CREATE INDEX altcha_spent_expires_at ON altcha_spent (expires_at);
