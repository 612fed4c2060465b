-- The bot check's replay store (service/signup/botcheck.py, sql/159).

-- name: spend
-- Records a challenge as spent. One row: the first to spend it (a concurrent second
-- waits for the first's commit, then finds the conflict). None: spent before. It also
-- clears a few rows of challenges that have expired, skipping rows another statement
-- holds, so the table stays small between retention passes.
WITH expired AS (
    DELETE FROM altcha_spent
    WHERE signature IN (
        SELECT signature FROM altcha_spent
        WHERE expires_at < now()
        LIMIT 20
        FOR UPDATE SKIP LOCKED
    )
)
INSERT INTO altcha_spent (signature, expires_at)
VALUES (:signature, to_timestamp(:expires_at))
ON CONFLICT (signature) DO NOTHING
RETURNING 1;

-- name: purge_spent
-- Every row of an expired challenge (retention): verification refuses those anyway.
DELETE FROM altcha_spent WHERE expires_at < now();
