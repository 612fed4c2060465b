-- The lines of an import, COPYed in and read back by one statement, then deleted in the
-- same transaction (service/importer.py): no row is ever committed here, so the table
-- keeps nothing about anyone. UNLOGGED: nothing of it needs to survive a crash. Each
-- import marks its rows with its own id, so imports run side by side.
CREATE UNLOGGED TABLE import_staging (
    import_id     uuid        NOT NULL,
    line          integer     NOT NULL,
    email         text        NOT NULL,
    name          text,
    consented_at  timestamptz,
    source        text,
    tracking      boolean     NOT NULL
);
