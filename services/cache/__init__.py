"""Metric topics into Redis, served by the cache API."""
