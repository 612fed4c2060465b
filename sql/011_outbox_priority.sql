-- Confirmation mail goes before campaign mail: a person waiting for the link on a
-- signup page must not queue behind a send to the whole list.
ALTER TABLE outbox
    ADD COLUMN priority smallint NOT NULL
    GENERATED ALWAYS AS (CASE WHEN kind = 'confirm' THEN 0 ELSE 1 END) STORED;
CREATE INDEX outbox_claim ON outbox (priority, run_at, id);
