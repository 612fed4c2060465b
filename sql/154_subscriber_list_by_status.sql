-- migrate: no-transaction
-- The dashboard's subscriber list filtered by status (issue 31): with the address-order
-- index alone, a page of the rarer status (a few pending sign-ups among a million active
-- subscribers) read the whole index to find its 50 rows. This index gives each status its
-- own address order; sql/queries/subscriber_list.sql's `*_in_status` queries walk it.
--
-- Built CONCURRENTLY: sign-ups, confirmations and erasures go on meanwhile (a few seconds
-- per million subscribers). One statement only: a multi-statement string runs as one
-- transaction, where CONCURRENTLY is refused. If the build fails it leaves an INVALID
-- index behind; drop it (`DROP INDEX CONCURRENTLY subscribers_status_email_order`) and
-- run `newsletter migrate` again.
CREATE INDEX CONCURRENTLY subscribers_status_email_order
    ON subscribers (status, (lower(email) COLLATE "C"), id);
