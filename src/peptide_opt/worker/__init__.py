"""Workers: the loop that claims tasks from PostgreSQL and the process pool that runs them."""
