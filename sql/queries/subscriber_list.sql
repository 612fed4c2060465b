-- The dashboard's subscriber list (service/admin/dashboard/subscriber_list.py).

-- name: list_subscribers
-- The dashboard's list: a keyset page in address order (C collation: the index
-- subscribers_email_order), optionally one status, optionally an address prefix
-- (:pattern is the escaped prefix and '%').
SELECT id, email, name, status, tracking_consent, created_at, confirmed_at,
       lower(email) COLLATE "C" AS sort_key
FROM subscribers
WHERE (:status::text IS NULL OR status = :status::text)
  AND lower(email) COLLATE "C" LIKE :pattern
  AND (lower(email) COLLATE "C", id) > (:after_key::text COLLATE "C", :after_id::bigint)
ORDER BY lower(email) COLLATE "C", id
LIMIT :limit;
