-- migrate: no-transaction
-- Monthly partitions of `opens`, step 3 of 4: the BRIN index on time that replaces the
-- B-tree opens_at (106 KB against 460 MB at 20 M opens: opens are written in time order),
-- built without blocking writes. Should it fail, it leaves an INVALID index behind:
-- DROP INDEX opens_at_brin and migrate again.
CREATE INDEX CONCURRENTLY opens_at_brin ON opens USING brin (at);
