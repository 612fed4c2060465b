-- Retention deletes deliveries older than OPEN_RETENTION by queue time; without this
-- index every hourly pass would scan every delivery ever made.
CREATE INDEX deliveries_queued_at ON deliveries (queued_at);
