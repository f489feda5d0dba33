"""The PostgreSQL task queue: schema migrations, SQL and the data-access layer."""
