-- One definition for each consent policy that SQL applies, called by every query that
-- applies it (issue 25), so the statements cannot drift apart again.

-- Whose opens may be recorded as theirs, per TRACKING_MODE: with their consent
-- (`consent`), unless they objected (`notice`), never (`off`). The recorder's statement
-- (sql/queries/pixel.sql) calls it; service/tracking/policy.py is the same rule in Python
-- (which pixel an email carries), and tests/tracking/test_policy.py holds the two to each
-- other over every combination. A one-expression SQL function: inlined by the planner.
CREATE FUNCTION personal_tracking(mode text, consent boolean, withdrawn_at timestamptz)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE mode
        WHEN 'consent' THEN coalesce(consent, false)
        WHEN 'notice' THEN withdrawn_at IS NULL
        ELSE false
    END
$$;

-- One consent evidence row (GDPR Art. 7(1)): what, when, IP per IP_MODE, user agent,
-- source, consent text version, method. `at` NULL means now.
CREATE TYPE consent_evidence AS (
    subscriber_id         bigint,
    kind                  text,
    at                    timestamptz,
    ip                    text,
    user_agent            text,
    source                text,
    consent_text_version  text,
    method                text
);

-- The one statement that writes consent_events. It takes an array so that a sign-up
-- stays one statement and an import stays set-based (one call per chunk, not per line).
-- PL/pgSQL keeps the INSERT's plan for the session; a LANGUAGE sql function would plan it
-- again at every call (measured: twice the sign-up statement's time).
CREATE FUNCTION record_consent(events consent_evidence[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    written bigint;
BEGIN
    INSERT INTO consent_events (subscriber_id, kind, at, ip, user_agent, source,
                                consent_text_version, method)
    SELECT e.subscriber_id, e.kind, coalesce(e.at, now()), e.ip, e.user_agent, e.source,
           e.consent_text_version, e.method
    FROM unnest(events) AS e;
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END
$$;

-- Why an address's daily allowance of emails refuses one more at `at`: 'per_day' (it
-- had RATE_CONFIRM_PER_DAY today), 'min_interval' (the previous one went less than
-- RATE_CONFIRM_MIN_INTERVAL before), or NULL (it grants it).
CREATE FUNCTION email_allowance_refusal(hits integer, last_at timestamptz, per_day integer,
                                        min_interval float8, at timestamptz)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN hits >= per_day THEN 'per_day'
        WHEN last_at > at - make_interval(secs => min_interval) THEN 'min_interval'
    END
$$;

-- One claim on the allowance (atomic: ON CONFLICT locks the row): the day's new hit
-- count, or NULL when refused (PL/pgSQL for its kept plan, as above). A sign-up's confirmation email, a fresh link to the
-- subscriber's page and an address change's email all spend it.
CREATE FUNCTION claim_email_allowance(claim_key bytea, day_start timestamptz,
                                      per_day integer, min_interval float8)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    claimed integer;
BEGIN
    INSERT INTO rate_limits AS r (scope, key, window_start, hits, last_at)
    VALUES ('address', claim_key, day_start, 1, now())
    ON CONFLICT (scope, key, window_start) DO UPDATE SET hits = r.hits + 1, last_at = now()
        WHERE email_allowance_refusal(r.hits, r.last_at, per_day, min_interval, now()) IS NULL
    RETURNING r.hits INTO claimed;
    RETURN claimed;
END
$$;
