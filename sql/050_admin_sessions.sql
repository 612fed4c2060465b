-- Dashboard sign-ins. The cookie carries a signed random id; this row is what makes
-- sign-out and expiry hold on the server, also for a copied or replayed cookie.
CREATE TABLE admin_sessions (
    id_hash     bytea       PRIMARY KEY,   -- sha256 of the random id in the cookie
    token_hash  bytea       NOT NULL,      -- sha256 of the admin token used to sign in:
                                           -- removing it from ADMIN_TOKENS ends its sessions
    csrf        text        NOT NULL,      -- synchroniser token of every form of the session
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX admin_sessions_expires ON admin_sessions (expires_at);
