"""Workers: the loop that claims tasks from PostgreSQL and the pool that runs them."""
