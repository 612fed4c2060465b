"""The SQL files, shipped in the wheel as the package data `service.sql` (pyproject.toml)."""
