-- Consent evidence (service/privacy/evidence.py). Every row of consent_events is written
-- by `record_consent` (sql/139, sql/147), also by the sign-up and import statements.

-- name: record
SELECT record_consent(ARRAY[ROW(:subscriber_id::bigint, :kind::text, NULL::timestamptz,
                                :ip::text, :user_agent::text, :source::text,
                                :consent_text_version::text, :method::text,
                                :topic::text)::consent_evidence]);
