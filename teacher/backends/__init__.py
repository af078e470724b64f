"""Teacher and query-generator backends; each module is imported only when its name is asked for."""
