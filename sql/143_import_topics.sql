-- Import lines may name topics (issue 28): the staged line's topic ids, resolved from
-- their slugs by the importer (service/admin/importer.py). NULL: the line named none.
ALTER TABLE import_staging ADD COLUMN topic_ids bigint[];
