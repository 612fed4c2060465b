-- The dashboard's subscriber list filtered by status (issue 31): with the address-order
-- index alone, a page of the rarer status (a few pending sign-ups among a million active
-- subscribers) read the whole index to find its 50 rows. This index gives each status its
-- own address order; sql/queries/subscriber_list.sql's `*_in_status` queries walk it.
-- Its price is an index entry per new subscriber and per confirmation: 500,000 rows
-- inserted in one statement took 5.6 s instead of 3.8 s (an import of a list pays it;
-- the counters of sql/153 cost no measurable time there).
--
-- Its address column gets no statistics (as sql/138 does for the others: ANALYZE would
-- sample addresses into pg_statistic, out of an erasure's reach). Built in one
-- transaction with that setting, so that no ANALYZE sees the index before it: CREATE
-- INDEX CONCURRENTLY cannot share a transaction. The build holds a SHARE lock on
-- subscribers: sign-ups, confirmations, erasures and imports wait for it (2 s for a
-- million subscribers on the 2-core bench machine); the pixel and every read go on.
CREATE INDEX subscribers_status_email_order
    ON subscribers (status, (lower(email) COLLATE "C"), id);
ALTER INDEX subscribers_status_email_order ALTER COLUMN 2 SET STATISTICS 0;
