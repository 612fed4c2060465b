-- The outbox is a queue: each sent email deletes its row, so a campaign leaves as many
-- dead rows as it had recipients, and the claim (an index scan in (priority, run_at, id)
-- order) walks their dead index entries until a vacuum removes them. PostgreSQL's
-- defaults start autovacuum at 20 % of the table dead (200,000 rows of a million-row
-- queue) and pause it for I/O cost; on the outbox it starts after 10,000 dead rows
-- whatever the table's size, without pauses (the table is narrow: a pass is quick).
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000
);

-- Every send updates its delivery row (sent_at): vacuumed after 2 % of it changed
-- rather than 20 %, and room left in each page so the update stays on the same page
-- (a HOT update, no new index entries).
ALTER TABLE deliveries SET (autovacuum_vacuum_scale_factor = 0.02, fillfactor = 90);
