-- `newsletter dev` only (service/devmode.py): what the caught-mail page shows besides mail.

-- name: held_back_confirmations
-- Pending sign-ups whose latest request got no confirmation email: none is queued and
-- none was handed to SMTP after it (the address limits of service/web/ratelimit.py held it).
SELECT s.email, s.signup_at, s.confirm_sent_at
FROM subscribers s
WHERE s.status = 'pending'
  AND (s.confirm_sent_at IS NULL OR s.confirm_sent_at < s.signup_at)
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.subscriber_id = s.id AND o.kind = 'confirm')
ORDER BY s.signup_at DESC
LIMIT 50;

-- name: address_allowance
-- The address's email counter of the current UTC day, and why it refused the claim made
-- at the sign-up (`email_allowance_refusal`, sql/139, the rule every claim applies).
SELECT window_start, hits, last_at,
       email_allowance_refusal(hits, last_at, :per_day, :min_interval, :signup_at) AS refusal
FROM rate_limits
WHERE scope = 'address' AND key = ANY(:keys::bytea[])
  AND window_start = to_timestamp(:window_start)
ORDER BY hits DESC
LIMIT 1;
