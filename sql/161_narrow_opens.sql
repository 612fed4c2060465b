-- Narrower rows of `opens` (issue 31, point 3): the user agent as a number into a lookup
-- table, the client, system, country and machine reason as small codes, the address as
-- `inet`. About 80 instead of 160 bytes of heap per open.
--
-- Online: ADD COLUMN without a default is a catalog change (a moment's ACCESS EXCLUSIVE
-- lock of `opens` and its partitions, no row is read or rewritten). The recorder writes
-- only the new columns from now on; rows written before keep their values in the old
-- text columns, which a new row leaves NULL. A NULL costs nothing in the heap (the row
-- already has a null bitmap of the same width: machine_reason is NULL for a person's
-- open), so a new row is narrow at once, and the old rows leave with their months
-- (OPEN_RETENTION): no backfill rewrites 20 M rows and their WAL. `opens_readable` shows
-- both as text, for the export and for people. The old columns can be dropped by a later
-- migration once no row that retention keeps holds them.
--
-- user_agents: one row per distinct user-agent string, shared by every open that sent
-- it. A UA string alone is not personal (the same string comes from every device of one
-- model and version); what links it to a person is the open, which the erasure deletes.
-- last_seen (the first day of the UTC month) is moved forward by the recorder at most
-- once a month per string; the retention pass deletes the strings not seen since before
-- the retention boundary's month, so that a rare string lives no longer than the opens
-- that used it.
-- open_labels: the small closed vocabularies of the classifier and of the country
-- look-up (client, os, machine_reason, ISO country codes), a few hundred words, never
-- personal, never purged.
CREATE TABLE user_agents (
    id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent      text    NOT NULL UNIQUE,
    last_seen  date    NOT NULL
);
ALTER TABLE user_agents ALTER COLUMN agent SET STATISTICS 0;
CREATE INDEX user_agents_last_seen ON user_agents (last_seen);

CREATE TABLE open_labels (
    id     smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    label  text     NOT NULL UNIQUE
);

ALTER TABLE opens
    ADD COLUMN addr           inet,      -- reduced per IP_MODE; replaces ip
    ADD COLUMN user_agent_id  integer,   -- user_agents.id; replaces user_agent
    ADD COLUMN client_id      smallint,  -- open_labels.id; replaces client
    ADD COLUMN os_id          smallint,  -- open_labels.id; replaces os
    ADD COLUMN country_id     smallint,  -- open_labels.id; replaces country
    ADD COLUMN reason_id      smallint;  -- open_labels.id; replaces machine_reason
ALTER TABLE opens ALTER COLUMN addr SET STATISTICS 0;

-- Every open as text, whichever shape its row has.
CREATE VIEW opens_readable AS
SELECT o.subscriber_id, o.campaign_id, o.at,
       coalesce(host(o.addr), o.ip) AS ip,
       coalesce(ua.agent, o.user_agent) AS user_agent,
       coalesce(cl.label, o.client) AS client,
       coalesce(os.label, o.os) AS os,
       coalesce(co.label, o.country) AS country,
       coalesce(re.label, o.machine_reason) AS machine_reason
FROM opens o
LEFT JOIN user_agents ua ON ua.id = o.user_agent_id
LEFT JOIN open_labels cl ON cl.id = o.client_id
LEFT JOIN open_labels os ON os.id = o.os_id
LEFT JOIN open_labels co ON co.id = o.country_id
LEFT JOIN open_labels re ON re.id = o.reason_id;

-- No statistics on the address in the months to come either (see 138 and 151).
ALTER TABLE opens_default ALTER COLUMN addr SET STATISTICS 0;
CREATE OR REPLACE FUNCTION opens_ensure_month(month date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    lo   timestamptz := month::timestamp AT TIME ZONE 'UTC';
    hi   timestamptz := (month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    name text := format('opens_y%sm%s', to_char(month, 'YYYY'), to_char(month, 'MM'));
BEGIN
    IF extract(day FROM month) <> 1 THEN
        RAISE EXCEPTION 'opens_ensure_month: % is not the first day of a month', month;
    END IF;
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE %I (LIKE opens)', name);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN ip SET STATISTICS 0,'
                       ' ALTER COLUMN user_agent SET STATISTICS 0,'
                       ' ALTER COLUMN addr SET STATISTICS 0', name);
        EXECUTE format('WITH moved AS (DELETE FROM opens_default WHERE at >= %L AND at < %L'
                       ' RETURNING *) INSERT INTO %I SELECT * FROM moved', lo, hi, name);
        EXECUTE format('ALTER TABLE opens ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       name, lo, hi);
    EXCEPTION WHEN invalid_object_definition THEN
        -- "would overlap partition …": the legacy partition still covers the month.
        RETURN false;
    END;
    RETURN true;
END
$$;
