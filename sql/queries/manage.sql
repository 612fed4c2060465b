-- The subscriber's own page (service/manage/page.py, manage_links.py, manage_address.py).

-- name: subscriber_lang
-- The language of the person's pages (NULL: none stored, or no such subscriber).
SELECT lang FROM subscribers WHERE id = :id;

-- name: set_lang
-- The language the person chose on their page (one of LANGUAGES, checked by the caller).
UPDATE subscribers SET lang = :lang WHERE id = :id;

-- name: subscriber
SELECT id, email, name, status, tracking_consent, tracking_withdrawn_at, lang
FROM subscribers WHERE id = :id;

-- name: link_target
-- The active subscriber a fresh link is for (by id, or by address for the /manage
-- form), and whether its email is queued already.
SELECT s.id,
       EXISTS (SELECT 1 FROM outbox o WHERE o.subscriber_id = s.id AND o.kind = 'manage_link')
           AS queued
FROM subscribers s
WHERE (s.id = :id OR lower(s.email) = lower(:email)) AND s.status = 'active'
LIMIT 1;

-- name: queue_link_email
-- The fresh-link email job, and the wake-up of every replica's outbox worker (at commit).
-- The subscriber is locked until commit (FOR KEY SHARE stands for a foreign key, sql/130):
-- no job for a subscriber erased meanwhile, and a later erasure deletes the job.
WITH job AS (
    INSERT INTO outbox (kind, subscriber_id)
    SELECT 'manage_link', id FROM subscribers WHERE id = :id FOR KEY SHARE
    RETURNING id
)
SELECT pg_notify('newsletter_outbox', id::text) FROM job;

-- name: issue_link
-- A fresh link, made when its email is composed, so that it expires
-- MANAGE_LINK_MAX_AGE after the email left, not after it was queued.
INSERT INTO manage_links (subscriber_id, expires_at)
VALUES (:subscriber_id, now() + make_interval(secs => :max_age))
RETURNING id;

-- name: open_link
-- Opens the link, once: atomic, whichever replica serves the request. An automatic post
-- (the page's script) within SCANNER_WINDOW of the link's issue is a mail scanner's and
-- does not count: the person's button always does.
UPDATE manage_links
SET used_at = now(),
    session_hash = :session_hash,
    session_until = now() + make_interval(secs => :max_age)
WHERE id = :link_id AND subscriber_id = :subscriber_id
  AND used_at IS NULL AND expires_at > now()
  AND (NOT :auto OR created_at <= now() - make_interval(secs => :scanner_window))
RETURNING subscriber_id;

-- name: link_state
-- Why a link did not open: used, expired, too early for an automatic post, or gone.
SELECT used_at IS NOT NULL AS used,
       expires_at <= now() AS expired,
       created_at > now() - make_interval(secs => :scanner_window) AS in_scanner_window
FROM manage_links WHERE id = :link_id AND subscriber_id = :subscriber_id;

-- name: session_subscriber
-- The subscriber whose page's forms carry this secret, while the session lasts.
SELECT l.subscriber_id, l.session_until
FROM manage_links l JOIN subscribers s ON s.id = l.subscriber_id
WHERE l.session_hash = :session_hash AND l.session_until > now() AND s.status = 'active';

-- name: lock_subscriber
-- The row as it is now; waits for a pixel batch holding it (as a withdrawal does).
SELECT id, email, name, status, tracking_consent
FROM subscribers WHERE id = :id AND status = 'active' FOR UPDATE;

-- name: set_name
UPDATE subscribers SET name = :name WHERE id = :id;

-- name: address_taken
SELECT EXISTS (SELECT 1 FROM subscribers WHERE lower(email) = lower(:email));

-- name: claim_address
-- One claim on an address's daily allowance of emails (the one `sign_up` spends,
-- sql/139); the new hit count, or NULL when the allowance is spent.
SELECT claim_email_allowance(:claim_key, to_timestamp(:window_start), :per_day,
                             :min_interval);

-- name: drop_address_change
DELETE FROM address_changes WHERE subscriber_id = :id;

-- name: request_address_change
-- A new row (a new id) for every request: a link mailed for an earlier request names
-- a row that is gone, so it cannot confirm a later address. `unmailed`: shown on the
-- person's page like any request, never mailed (the address is taken or over its
-- allowance, sql/137).
INSERT INTO address_changes (subscriber_id, new_email, unmailed)
VALUES (:id, :new_email, :unmailed) RETURNING id;

-- name: current_change
-- The new address of the subscriber's request, while it can still be confirmed.
SELECT new_email FROM address_changes
WHERE subscriber_id = :id AND requested_at > now() - make_interval(secs => :max_age);

-- name: queue_address_email
-- The new address's confirmation email, unless one waits to be sent (its composer reads
-- the current request). A job being sent right now (locked by the outbox worker, which
-- may have read the previous request) does not count: SKIP LOCKED passes over it. The
-- subscriber is locked until commit (FOR KEY SHARE stands for a foreign key, sql/130).
WITH job AS (
    INSERT INTO outbox (kind, subscriber_id)
    SELECT 'address_confirm', s.id
    FROM subscribers s
    WHERE s.id = :id
      AND NOT EXISTS (
          SELECT 1 FROM outbox WHERE subscriber_id = :id AND kind = 'address_confirm'
          FOR UPDATE SKIP LOCKED
      )
    FOR KEY SHARE OF s
    RETURNING id
)
SELECT count(*) FROM (SELECT pg_notify('newsletter_outbox', id::text) FROM job) n;

-- name: pending_change
-- The address change an email is composed for (the current request of the subscriber),
-- taken for this job unless another job took it (sql/132): mailed once.
UPDATE address_changes c
SET mailed_by_job = :job_id
FROM subscribers s
WHERE c.subscriber_id = :subscriber_id AND s.id = c.subscriber_id AND s.status = 'active'
  AND c.requested_at > now() - make_interval(secs => :max_age) AND NOT c.unmailed
  AND (c.mailed_by_job IS NULL OR c.mailed_by_job = :job_id)
RETURNING c.id, c.new_email, s.name, s.lang;

-- name: change_state
SELECT c.new_email
FROM address_changes c JOIN subscribers s ON s.id = c.subscriber_id
WHERE c.id = :change_id AND c.subscriber_id = :id AND s.status = 'active'
  AND c.requested_at > now() - make_interval(secs => :max_age) AND NOT c.unmailed;

-- name: lock_change
-- The subscriber row first (the order of a sign-up and of an erasure's delete), then
-- the change: an unsubscribe that commits first leaves nothing to lock.
SELECT s.email AS old_email, c.new_email
FROM subscribers s JOIN address_changes c ON c.subscriber_id = s.id
WHERE s.id = :id AND c.id = :change_id AND s.status = 'active'
  AND c.requested_at > now() - make_interval(secs => :max_age) AND NOT c.unmailed
FOR UPDATE OF s, c;

-- name: apply_address_change
-- The new address becomes the subscriber's; the request row goes with the old address.
WITH changed AS (
    UPDATE subscribers SET email = :new_email WHERE id = :id RETURNING id
)
DELETE FROM address_changes WHERE subscriber_id IN (SELECT id FROM changed);

-- name: next_email_at
-- When the address's daily allowance (sql/139's rule) grants its next email: NULL when
-- it grants one now. For the page that must say when a fresh link can be sent.
SELECT CASE email_allowance_refusal(hits, last_at, :per_day, :min_interval, now())
           WHEN 'per_day' THEN window_start + interval '1 day'
           WHEN 'min_interval' THEN last_at + make_interval(secs => :min_interval)
       END
FROM rate_limits
WHERE scope = 'address' AND key = :claim_key AND window_start = to_timestamp(:window_start);
