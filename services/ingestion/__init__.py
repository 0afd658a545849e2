"""FastAPI ingestion: HTTP events into Kafka."""
