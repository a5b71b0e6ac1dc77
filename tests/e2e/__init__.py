"""Whole processes: the CLI, the UI in a browser, daemons, PostgreSQL, several machines."""
