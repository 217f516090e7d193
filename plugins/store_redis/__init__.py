"""The ``redis`` coordinator: leases, GCRA budgets and recipient claims shared by many workers in Redis 7."""
