"""Servers and helpers the tests start: S3, PostgreSQL, a Hub look-alike, dagster dev, a browser."""
