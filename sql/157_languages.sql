-- The subscriber's language (issue 29): the primary subtag of a shipped language ('de'),
-- chosen at sign-up from the form's `lang` field, else Accept-Language, among LANGUAGES;
-- changeable on the person's page. NULL (everyone who signed up before): the first of
-- LANGUAGES. The code validates it; a nullable column without a default is a catalogue
-- change only, no table rewrite.
ALTER TABLE subscribers ADD COLUMN lang text;

-- A campaign's variants per language, {"de": {"subject", "html", "text"}}, checked like the
-- campaign's own templates when stored (service/campaigns/store.py). NULL: none; each
-- recipient without a variant in their language gets the campaign's own.
ALTER TABLE campaigns ADD COLUMN translations jsonb;

-- The import's `lang` field (service/admin/importer.py), staged with the rest of a line.
ALTER TABLE import_staging ADD COLUMN lang text;
