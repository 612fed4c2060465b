"""Named queries, shipped as `service.sql.queries` (pyproject.toml)."""
