-- The dashboard's subscriber list (service/admin/dashboard/subscriber_list.py).

-- Four forms of one page, so that each is bounded by an index in a generic plan too: the
-- whole list or one status (subscribers_email_order, or subscribers_status_email_order
-- of sql/154), each with or without an address prefix. An optional condition
-- (`:status IS NULL OR …`) would be a filter, read row by row.

-- name: list_subscribers
-- The dashboard's list: a keyset page in address order (C collation: the index
-- subscribers_email_order) from the cursor (exclusive).
SELECT id, email, name, status, tracking_consent, created_at, confirmed_at,
       lower(email) COLLATE "C" AS sort_key
FROM subscribers
WHERE (lower(email) COLLATE "C", id) > (:after_key::text COLLATE "C", :after_id::bigint)
ORDER BY lower(email) COLLATE "C", id
LIMIT :limit;

-- name: list_subscribers_in_status
-- list_subscribers of one status (subscribers_status_email_order).
SELECT id, email, name, status, tracking_consent, created_at, confirmed_at,
       lower(email) COLLATE "C" AS sort_key
FROM subscribers
WHERE status = :status::text
  AND (lower(email) COLLATE "C", id) > (:after_key::text COLLATE "C", :after_id::bigint)
ORDER BY lower(email) COLLATE "C", id
LIMIT :limit;

-- name: search_subscribers
-- list_subscribers for an address prefix: the cursor is at least the prefix
-- (subscriber_list.py raises it) and the page ends before :below, the first key past
-- every address starting with the prefix. Both bounds are index conditions, in a
-- generic plan too; a LIKE pattern in a parameter is not, and a search without a match
-- read the whole index past the cursor (1 s at 1 M subscribers, issue 31).
SELECT id, email, name, status, tracking_consent, created_at, confirmed_at,
       lower(email) COLLATE "C" AS sort_key
FROM subscribers
WHERE (lower(email) COLLATE "C", id) > (:after_key::text COLLATE "C", :after_id::bigint)
  AND lower(email) COLLATE "C" < :below::text COLLATE "C"
ORDER BY lower(email) COLLATE "C", id
LIMIT :limit;

-- name: search_subscribers_in_status
-- search_subscribers of one status (subscribers_status_email_order).
SELECT id, email, name, status, tracking_consent, created_at, confirmed_at,
       lower(email) COLLATE "C" AS sort_key
FROM subscribers
WHERE status = :status::text
  AND (lower(email) COLLATE "C", id) > (:after_key::text COLLATE "C", :after_id::bigint)
  AND lower(email) COLLATE "C" < :below::text COLLATE "C"
ORDER BY lower(email) COLLATE "C", id
LIMIT :limit;
