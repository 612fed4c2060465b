-- Queueing a campaign writes one deliveries row and one outbox row per subscriber, and
-- every index on them costs each of those rows an insertion: two are not worth it.
-- outbox_due (run_at, id) only answered "when is the next job due", which the claim's
-- index (priority, run_at, id) answers too, one priority at a time (next_due_in).
DROP INDEX outbox_due;
-- Retention finds old deliveries by queued_at, which grows with time: a BRIN index
-- (a summary per range of pages) serves that range scan at a fraction of a B-tree's
-- size and insertion cost.
DROP INDEX deliveries_queued_at;
CREATE INDEX deliveries_queued_at ON deliveries USING brin (queued_at);
