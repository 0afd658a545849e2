"""Metric and raw-event topics into ClickHouse (embedded chDB locally, a server when configured)."""
