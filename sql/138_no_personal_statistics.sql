-- No personal data in the planner's statistics.
--
-- ANALYZE (autovacuum's, and the import's own inside its transaction) samples each
-- column into pg_statistic: `most_common_vals` and `histogram_bounds` of
-- `subscribers.email` held up to 101 addresses of the list, those of the two indexes on
-- lower(email) as many again, and `import_staging`'s statistics the addresses and names
-- of the last import, committed with it although its rows never were. An erasure does
-- not reach pg_statistic: a sampled address stayed there until the next ANALYZE of its
-- table (for the staging table: the next import), and in every backup.
--
-- So the columns that hold what identifies a person get no statistics at all
-- (statistics target 0: ANALYZE skips them), nor do the expression indexes built on
-- them. No query needs them: addresses are looked up through unique indexes (estimated
-- as one row without statistics), IPs and user agents are never searched for.
--
-- A target of 0 only stops new samples; ANALYZE leaves the rows it skips as they are.
-- Changing a column's type drops its statistics, and so does rebuilding an index: the
-- columns are "changed" to their own type (no table rewrite; the expression indexes on
-- lower(email) are rebuilt, about 3 s per million subscribers on a small machine, under
-- the ACCESS EXCLUSIVE lock of ALTER TABLE). Triggers that name such a column (they
-- forbid the type change) are dropped and made again from their own definition.
DO $$
DECLARE
    target      record;
    names       text[];
    definitions text[];
    i           integer;
    ix          record;
BEGIN
    FOR target IN
        SELECT c.oid AS rel, c.relname AS tbl, a.attname AS col, a.attnum,
               format_type(a.atttypid, a.atttypmod) AS typ
        FROM (VALUES ('subscribers', 'email'), ('subscribers', 'name'),
                     ('consent_events', 'ip'), ('consent_events', 'user_agent'),
                     ('consent_events', 'source'),
                     ('opens', 'ip'), ('opens', 'user_agent'),
                     ('address_changes', 'new_email'),
                     ('import_staging', 'email'), ('import_staging', 'name'),
                     ('import_staging', 'source'), ('import_staging', 'consented_at'))
             AS p (tbl, col)
        JOIN pg_class c ON c.relname = p.tbl AND c.relnamespace = 'public'::regnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = p.col AND NOT a.attisdropped
    LOOP
        SELECT coalesce(array_agg(t.tgname::text), '{}'),
               coalesce(array_agg(pg_get_triggerdef(t.oid)), '{}')
        INTO names, definitions
        FROM pg_trigger t
        WHERE t.tgrelid = target.rel AND NOT t.tgisinternal
          AND EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_trigger'::regclass AND d.objid = t.oid
                        AND d.refobjid = target.rel AND d.refobjsubid = target.attnum);
        FOR i IN 1 .. coalesce(array_length(names, 1), 0) LOOP
            EXECUTE format('DROP TRIGGER %I ON public.%I', names[i], target.tbl);
        END LOOP;
        EXECUTE format('ALTER TABLE public.%I ALTER COLUMN %I TYPE %s, ALTER COLUMN %I SET STATISTICS 0',
                       target.tbl, target.col, target.typ, target.col);
        FOR i IN 1 .. coalesce(array_length(definitions, 1), 0) LOOP
            EXECUTE definitions[i];
        END LOOP;
        -- The expression indexes on the column (rebuilt just now): no statistics either.
        FOR ix IN
            SELECT x.indexrelid::regclass AS name, k.n
            FROM pg_index x
            CROSS JOIN LATERAL generate_subscripts(x.indkey, 1) AS k (n)
            WHERE x.indrelid = target.rel AND x.indkey[k.n] = 0
              AND EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = x.indexrelid
                            AND d.refobjid = target.rel AND d.refobjsubid = target.attnum)
        LOOP
            EXECUTE format('ALTER INDEX %s ALTER COLUMN %s SET STATISTICS 0', ix.name, ix.n + 1);
        END LOOP;
    END LOOP;
END
$$;
