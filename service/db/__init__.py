"""PostgreSQL: the connection pool and what "unavailable" means, named queries from sql/queries/, migrations."""
