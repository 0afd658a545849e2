"""The ingestion API's route groups, one module per API family: events (our own track and batch), segment
(Segment's tracking API) and ops (health, readiness, Prometheus, the event schema)."""
