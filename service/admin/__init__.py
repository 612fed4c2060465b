"""The operator's side: `/admin/api/*`, admin tokens, list import, the dashboard."""
